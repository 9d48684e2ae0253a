//! The upstream table: for every version of every service, its servers, how requests are spread
//! over them, and the kept-alive connections to them.
//!
//! - **Weighted round robin.** nginx's smooth weighted round robin, computed once when the table
//!   is built into a schedule (for weights 3:1: `a a b a`, repeated), and walked with an atomic
//!   counter: no lock and no arithmetic beyond a modulo per request.
//! - **Our own connection pool.** A small pool of HTTP/1.1 senders per server. We do not use
//!   hyper-util's client because graygate must know that a connection is established *before*
//!   the request body starts to flow: a server that cannot be connected to is skipped for the
//!   next one, and a canary that cannot be reached at all falls back to the stable version, and
//!   both are only possible while the (streamed, never buffered) body is still unread.
//!   `try_send_request` gives a request back when a pooled connection turns out to be dead before
//!   anything was written, so that it is retried on a fresh connection.
//! - **Down servers.** A server whose connect failed is "down": logged once when it goes down and
//!   once when it comes back (no log flood), and tried after the servers that are up until a
//!   recheck interval has passed, so that a dead server does not add a connect timeout to every
//!   request.
//! - **Health** (`super::health`). A server out of service (its active checks fail, or passive
//!   ejection took it out) is skipped by a request that can go to stable instead, and tried last
//!   by one that cannot (the stable version's own requests: better a server that may answer
//!   than a `502`). A version with no server in service sends its requests to stable before
//!   any connect is tried ([`UpstreamError::OutOfService`]).
//! - **One retry** (`super::retry`). A `GET`, `HEAD` or `OPTIONS` without a body whose server
//!   died before answering goes once more: to the next server of the version, else back to the
//!   caller for stable.
//! - **Reloaded without a restart.** The data plane holds a [`LiveUpstreams`]: the table is
//!   rebuilt from a reloaded config ([`LiveUpstreams::plan`]) and swapped whole
//!   ([`LiveUpstreams::install`]); a request finishes on the table it started with. Indexes stay
//!   stable, because compiled policies refer to upstreams by index: an upstream keeps its index
//!   while its name stays in the config, a new one is appended, and a removed one leaves a
//!   retired slot (no servers, no name a policy can use) that a later reload may fill again.
//!   An upstream whose servers did not change keeps its connection pool and counters.
//! - **Out of file descriptors** (`EMFILE`, `ENFILE` on connect) is graygate's own limit, not
//!   the server's fault ([`UpstreamError::LocalFdLimit`]): the server is neither marked down nor
//!   told to passive health, the connect is not counted as the server's failure, and the
//!   condition is counted on its own ([`local_fd_limit_failures`]) and logged once per episode.
//! - **TLS and HTTP/2** (`upstream_tls`, `upstream_protocol`): an upstream's connections may be
//!   TLS, and may speak HTTP/2 (`h2` over TLS, `h2c` over TCP). An HTTP/2 server has one shared,
//!   multiplexed connection instead of the pool; connect failover, the down/up bookkeeping,
//!   passive health (a failed TLS handshake is a failed connect) and the canary-to-stable
//!   fallback work the same, since a request still comes back whole when no connection to a
//!   server can be made.

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::h1::{self, H1Error};
use super::health::{
    self, HealthCheck, HealthConfigError, PassiveHealth, ServerHealth, ServerStatus, UpstreamHealth,
};
use super::retry::{self, Replay};
use super::ticks::{self, TickClock};
use super::upstream_protocol::{self, H2Connection, Transport};
use super::upstream_tls::{TlsError, UpstreamIo};
use super::{BoxError, ProxyBody, Timeouts};

/// Idle connections kept per server and data plane worker (as nginx's `keepalive`, which is per
/// worker process). Beyond this, a connection that finishes a request is
/// closed: enough to absorb bursts, small enough not to hold thousands of sockets open.
const MAX_IDLE_PER_SERVER: usize = 64;

/// How long a server that failed to connect is tried only after the others. After that one
/// request probes it again in its normal turn.
const DOWN_RECHECK: Duration = Duration::from_secs(5);

/// Longest precomputed round-robin schedule. Larger weight sums are scaled down to this; the
/// ratio stays within 1/`MAX_SCHEDULE` of what was configured.
const MAX_SCHEDULE: u64 = 10_000;

/// Pooled connections that turned out dead tried for one request before a fresh connect, so
/// that a pool of stale connections cannot make one request loop.
const MAX_STALE_RETRIES: usize = 4;

/// How often an HTTP/2 upstream connection is pinged, also while idle, and how long the answer
/// may take: a connection whose server vanished without closing it is found dead and replaced
/// before a request is lost on it, without an idle timeout that would close healthy ones.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// One upstream (a version of a service) as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The name policies use to point at this upstream (e.g. `shop-v2`).
    pub name: String,
    /// The servers that run this version.
    pub servers: Vec<ServerConfig>,
    /// Active health checks of its servers; `None`: none (passive ejection still runs).
    pub health: Option<HealthCheck>,
    /// Passive ejection of its servers, from the answers of real requests.
    pub passive: PassiveHealth,
    /// How its servers are spoken to: HTTP/1.1 (the default) or HTTP/2, over TCP or TLS.
    pub transport: Transport,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port` (`[v6]:port` for IPv6). Host names are resolved on every connect, so a DNS
    /// change is picked up by the next new connection.
    pub addr: String,
    /// Share of the requests relative to the other servers of the upstream. 0 drains the server:
    /// it gets no requests, not even as a retry.
    pub weight: u32,
}

/// Heaviest weight a server line may give (`weight=1000`): enough for any ratio, small enough
/// that the round-robin schedule stays short.
pub const MAX_WEIGHT: u32 = 1000;

/// A mistake in the upstream configuration.
///
/// [`check_upstreams`] is the one place these rules live: the config calls it to report the
/// mistake at its line ([`UpstreamConfigError::field`] names the field), and [`Upstreams::new`]
/// calls it so that a table built in code is held to the same rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamConfigError {
    /// An upstream without a name: no policy could point at it.
    #[error("an upstream needs a name")]
    NoName { upstream: usize },
    /// Two upstreams with one name: policies could not say which one they mean.
    #[error("upstream `{name}` is defined twice")]
    Duplicate { upstream: usize, name: String },
    /// No server with a weight above 0: every request to it would fail.
    #[error("upstream `{name}` needs at least one server with a weight above 0")]
    NoServers { upstream: usize, name: String },
    /// A server address that is not `host:port`.
    #[error("{error}")]
    BadServer {
        upstream: usize,
        server: usize,
        error: ServerError,
    },
    /// Health settings that cannot work.
    #[error("{error}")]
    Health {
        upstream: usize,
        error: HealthConfigError,
    },
    /// A server of a TLS upstream whose host is no name TLS can verify.
    #[error("{error}")]
    BadServerName {
        upstream: usize,
        server: usize,
        error: TlsError,
    },
}

impl UpstreamConfigError {
    /// The config field the mistake is in: `upstreams[2].name`, `upstreams[0].servers[1]`.
    pub fn field(&self) -> String {
        match self {
            UpstreamConfigError::NoName { upstream }
            | UpstreamConfigError::Duplicate { upstream, .. } => {
                format!("upstreams[{upstream}].name")
            }
            UpstreamConfigError::NoServers { upstream, .. } => {
                format!("upstreams[{upstream}].servers")
            }
            UpstreamConfigError::BadServer {
                upstream, server, ..
            }
            | UpstreamConfigError::BadServerName {
                upstream, server, ..
            } => format!("upstreams[{upstream}].servers[{server}]"),
            UpstreamConfigError::Health { upstream, error } => {
                format!("upstreams[{upstream}].{}", error.field())
            }
        }
    }
}

/// A server line that is not `host:port` with options (`"10.0.0.5:8080 weight=3"`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerError {
    /// Nothing but spaces.
    #[error("empty server")]
    Empty,
    /// An address without a `:port`.
    #[error("`{addr}` has no port: write host:port")]
    NoPort { addr: String },
    /// An empty host, a port that is not a number up to 65535, or an IPv6 address not in
    /// brackets.
    #[error("`{addr}` is not host:port")]
    NotHostPort { addr: String },
    /// A weight outside 1..=[`MAX_WEIGHT`].
    #[error("weight `{weight}` is not a whole number from 1 to {MAX_WEIGHT}")]
    Weight { weight: String },
    /// An option other than `weight=N`.
    #[error("unknown server option `{option}` (known: weight=N)")]
    UnknownOption { option: String },
}

impl std::str::FromStr for ServerConfig {
    type Err = ServerError;

    /// `"127.0.0.1:8080"` or `"backend.local:8080 weight=3"` (weight 1 when not given).
    fn from_str(text: &str) -> Result<Self, ServerError> {
        let mut parts = text.split_whitespace();
        let addr = parts.next().ok_or(ServerError::Empty)?;
        check_host_port(addr)?;
        let mut weight = 1;
        for part in parts {
            match part.split_once('=') {
                Some(("weight", w)) => {
                    weight = w
                        .parse::<u32>()
                        .ok()
                        .filter(|w| (1..=MAX_WEIGHT).contains(w))
                        .ok_or_else(|| ServerError::Weight {
                            weight: w.to_string(),
                        })?;
                }
                _ => {
                    return Err(ServerError::UnknownOption {
                        option: part.to_string(),
                    })
                }
            }
        }
        Ok(ServerConfig {
            addr: addr.to_string(),
            weight,
        })
    }
}

/// Checks upstream definitions: every upstream has a name of its own and at least one server
/// with a weight above 0, and every server address is `host:port` (with a host TLS can verify,
/// for a TLS upstream). The first mistake found is returned.
pub fn check_upstreams(configs: &[UpstreamConfig]) -> Result<(), UpstreamConfigError> {
    for (i, cfg) in configs.iter().enumerate() {
        if cfg.name.trim().is_empty() {
            return Err(UpstreamConfigError::NoName { upstream: i });
        }
        if configs[..i].iter().any(|other| other.name == cfg.name) {
            return Err(UpstreamConfigError::Duplicate {
                upstream: i,
                name: cfg.name.clone(),
            });
        }
        for (j, server) in cfg.servers.iter().enumerate() {
            check_host_port(&server.addr).map_err(|error| UpstreamConfigError::BadServer {
                upstream: i,
                server: j,
                error,
            })?;
            if let Some(tls) = cfg.transport.tls() {
                tls.server_name(&server.addr).map_err(|error| {
                    UpstreamConfigError::BadServerName {
                        upstream: i,
                        server: j,
                        error,
                    }
                })?;
            }
        }
        if cfg.servers.iter().all(|s| s.weight == 0) {
            return Err(UpstreamConfigError::NoServers {
                upstream: i,
                name: cfg.name.clone(),
            });
        }
        let health = cfg.health.as_ref().map_or(Ok(()), HealthCheck::check);
        health
            .and_then(|()| cfg.passive.check())
            .map_err(|error| UpstreamConfigError::Health { upstream: i, error })?;
    }
    Ok(())
}

/// Why a request could not be exchanged with an upstream. Small typed variants, so that the
/// caller can pick the status (502 or 504) and tests can check which one happened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connect did not finish within [`Timeouts::connect`].
    #[error("connect to {server} timed out")]
    ConnectTimeout { server: Arc<str> },
    /// The TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect to {server} failed: {source}")]
    Connect {
        server: Arc<str>,
        #[source]
        source: io::Error,
    },
    /// No file descriptor was left for the connection (`EMFILE`, `ENFILE`): graygate's own
    /// limit, not a fault of the server, which is neither marked down nor ejected for it.
    #[error("no file descriptor left to connect to {server}: graygate's own open-file limit (see `ulimit -n` and max_connections), not the server's fault")]
    LocalFdLimit { server: Arc<str> },
    /// The TLS handshake failed: the certificate is not trusted or not for this name, the
    /// server refused the client certificate, or it did not agree to HTTP/2.
    #[error("TLS handshake with {server} failed: {source}")]
    Tls {
        server: Arc<str>,
        #[source]
        source: io::Error,
    },
    /// Another request's connect to this HTTP/2 server failed while this one waited for it:
    /// the server is not tried again right away.
    #[error("connect to {server} failed for a concurrent request")]
    ConcurrentConnectFailed { server: Arc<str> },
    /// The HTTP handshake over a new connection failed.
    #[error("HTTP handshake with {server} failed: {source}")]
    Handshake {
        server: Arc<str>,
        #[source]
        source: hyper::Error,
    },
    /// A new connection closed before the request could be written on it.
    #[error("connection to {server} closed before the request was sent")]
    Closed { server: Arc<str> },
    /// No server of the upstream could be reached (or it has none; or the index is unknown).
    #[error("no server of upstream `{upstream}` can be reached")]
    AllServersDown { upstream: Arc<str> },
    /// No server of the upstream is in service (health checks, ejection): none was tried.
    #[error("no server of upstream `{upstream}` is in service")]
    OutOfService { upstream: Arc<str> },
    /// The request went out, but no response headers came back in time.
    #[error("{server} sent no response headers within {timeout:?}")]
    ResponseTimeout { server: Arc<str>, timeout: Duration },
    /// The request went out (at least partly) and the exchange failed: it cannot be retried.
    #[error("request to {server} failed: {source}")]
    Request {
        server: Arc<str>,
        #[source]
        source: ExchangeFailure,
    },
}

/// How an exchange that went out failed, by the client that carried it: hyper's, or graygate's
/// own for requests without a body (`super::h1`).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeFailure {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Own(#[from] H1Error),
}

/// An upstream's response body, from whichever client carried the exchange.
#[derive(Debug)]
pub enum UpstreamIncoming {
    /// hyper's client (requests with a body, upgrades, TLS, HTTP/2).
    Hyper(Incoming),
    /// graygate's own HTTP/1.1 client, read from the upstream socket as it is polled.
    Own(h1::ResponseBody),
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamIncoming::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            UpstreamIncoming::Own(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::Hyper(body) => body.is_end_stream(),
            UpstreamIncoming::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::Hyper(body) => body.size_hint(),
            UpstreamIncoming::Own(body) => body.size_hint(),
        }
    }
}

/// A request that could not be exchanged, and whether it can still go elsewhere.
pub enum SendError {
    /// No server of the upstream could be reached. The request was not sent and comes back
    /// whole, body unread: the caller may send it to another upstream (the stable one).
    Unreachable {
        request: Box<Request<ProxyBody>>,
        error: UpstreamError,
    },
    /// The request was (at least partly) sent to `server`: its body is gone, it cannot be
    /// retried anywhere.
    Failed {
        server: Arc<str>,
        error: UpstreamError,
    },
}

impl std::fmt::Debug for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unreachable { error, .. } => {
                f.debug_struct("Unreachable").field("error", error).finish()
            }
            SendError::Failed { server, error } => f
                .debug_struct("Failed")
                .field("server", server)
                .field("error", error)
                .finish(),
        }
    }
}

impl UpstreamError {
    /// True when the failure is graygate's own (out of file descriptors), not the server's: it
    /// says nothing about the server's health.
    pub fn is_local(&self) -> bool {
        matches!(self, UpstreamError::LocalFdLimit { .. })
    }

    /// True when the request went out and the server's connection died before the response
    /// headers: an idempotent request may be sent again (see `super::retry`).
    pub fn connection_died(&self) -> bool {
        match self {
            UpstreamError::Request {
                source: ExchangeFailure::Hyper(source),
                ..
            } => retry::connection_died(source),
            UpstreamError::Request {
                source: ExchangeFailure::Own(source),
                ..
            } => source.connection_died(),
            _ => false,
        }
    }
}

/// Upstream connects that found no file descriptor left, since start: graygate's own condition,
/// so counted for the process rather than for a server.
static LOCAL_FD_LIMIT: AtomicU64 = AtomicU64::new(0);
/// True while upstream connects find no file descriptor left: logged once per episode.
static LOCAL_FD_EXHAUSTED: AtomicBool = AtomicBool::new(false);

/// Upstream connects that failed for lack of a file descriptor since start (for the metrics:
/// `graygate_upstream_connect_fd_limit_total`). Not in any server's connect failures.
pub fn local_fd_limit_failures() -> u64 {
    LOCAL_FD_LIMIT.load(Ordering::Relaxed)
}

/// Counts a connect that found no file descriptor left, logging the start of an episode.
fn fd_limit_hit(error: &UpstreamError) {
    LOCAL_FD_LIMIT.fetch_add(1, Ordering::Relaxed);
    if !LOCAL_FD_EXHAUSTED.swap(true, Ordering::Relaxed) {
        warn!(error = %error, "upstream connects fail: out of file descriptors (graygate's own limit); the servers are not marked down");
    }
}

/// A connect succeeded: an episode of [`fd_limit_hit`] is over.
fn fd_limit_over() {
    if LOCAL_FD_EXHAUSTED.load(Ordering::Relaxed)
        && LOCAL_FD_EXHAUSTED.swap(false, Ordering::Relaxed)
    {
        info!("upstream connects have file descriptors again");
    }
}

/// The servers of an upstream to try for one request, by index: inline up to 8 (no allocation on
/// the request path), on the heap beyond.
type ServerOrder = smallvec::SmallVec<[usize; 8]>;

/// How one request may use the servers of an upstream ([`Upstreams::send_with`]). The same
/// options go with the request to stable after a fallback, so that it is retried once in all.
#[derive(Debug, Default)]
pub struct SendOptions {
    /// The request can go to another upstream (stable) when this one cannot take it: servers
    /// out of service are skipped rather than tried last, and a request to retry comes back
    /// ([`SendError::Unreachable`]) when no other server of this upstream is left.
    pub fallback: bool,
    /// The request may be sent again if its server dies under it ([`Replay::allowed`]).
    pub retryable: bool,
    /// The copy of the request for that, made when a retry could go somewhere; taken by the
    /// retry.
    pub retry: Option<Replay>,
    /// Set when the copy was used: the request was sent again.
    pub retried: bool,
}

/// A response from an upstream server.
#[derive(Debug)]
pub struct Exchange {
    /// The upstream's response; its body streams from the upstream connection.
    pub response: Response<UpstreamIncoming>,
    /// The server (`host:port`) that answered: for the access log.
    pub server: Arc<str>,
    /// From the request going out on a connection until the response headers came back.
    pub headers_after: Duration,
}

/// The upstream table, built from the configuration and shared by every connection (through
/// [`LiveUpstreams`], which swaps it when the config is reloaded).
pub struct Upstreams {
    /// The upstreams, in configuration order (then the ones added by reloads); a policy refers to
    /// them by index. Shared with the next table when their config stays.
    upstreams: Vec<Arc<Upstream>>,
    /// What the table was built with: a reload keeps an upstream only if these stay too.
    timeouts: Timeouts,
    /// Bound of a TCP connect to one server before the next one is tried.
    connect_timeout: Duration,
    /// Bound of the wait for response headers while nothing moves ([`Activity`]).
    response_timeout: Duration,
    /// The same bound on graygate's own client, kept without a timer per request
    /// (`super::ticks`); its sweeper is started by the first request that waits on it
    /// ([`Upstreams::response_clock`]): a table is built outside any runtime.
    response_clock: Arc<TickClock>,
    response_sweeper: AtomicBool,
    /// HTTP/1 client settings for every new upstream connection.
    client: http1::Builder,
    /// HTTP/2 client settings for every new connection to an `h2`/`h2c` upstream.
    h2_client: http2::Builder<TokioExecutor>,
}

/// One upstream: a version of a service and its servers.
struct Upstream {
    /// The name policies use.
    name: Arc<str>,
    /// What it was built from; `None` for a slot retired by a reload (no servers).
    config: Option<UpstreamConfig>,
    /// How its servers are spoken to (a copy of the config's, at hand on every request).
    transport: Transport,
    servers: Vec<Server>,
    /// Smooth weighted round robin: which server starts the attempt order, by turn.
    schedule: Box<[usize]>,
    /// Requests started on this upstream, modulo the schedule: the current turn.
    cursor: AtomicUsize,
    /// True after a request found no server reachable, until one is again: to log the state
    /// change once instead of once per request.
    unreachable: AtomicBool,
    /// Which servers are in service; its prober (active checks) stops when the upstream goes.
    health: Arc<UpstreamHealth>,
}

/// One server of an upstream.
struct Server {
    /// `host:port`, shared with logs and responses without copying.
    addr: Arc<str>,
    /// In service or not; shared with the upstream's [`UpstreamHealth`].
    health: Arc<ServerHealth>,
    /// 0: drained, never tried.
    weight: u32,
    /// Idle keep-alive connections to this server (HTTP/1.1).
    pool: Arc<Pool>,
    /// The shared connection to this server (HTTP/2).
    h2: H2Connection,
    /// The name sent as SNI and verified in the certificate (TLS).
    tls_name: Option<ServerName<'static>>,
    /// True after a connect failed, until one succeeds: tried after the others meanwhile.
    down: AtomicBool,
    /// While down, tried after the servers that are up until this time (ms of the health clock).
    recheck_at_ms: AtomicU64,
    /// Connect failures since start, for metrics and tests.
    connect_failures: AtomicU64,
}

/// Idle connections to one server, newest last (reused first, so the oldest ones expire): hyper's
/// and graygate's own (`super::h1`), each kind for the requests its client carries.
struct Pool {
    /// One set of lists per data plane worker (`workers`): a connection is driven by the
    /// runtime of the worker that opened it, so it is reused by that worker's requests only
    /// (another worker's would wake it across threads on every exchange).
    idle: Box<[WorkerIdle]>,
    /// Connections idle longer than this are closed, not reused: the upstream may have closed
    /// them already.
    idle_timeout: Duration,
}

/// An idle connection (hyper's sender, or graygate's own connection) that finished its last
/// exchange at `since`.
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Keeps `conn` at the end of `idle` (newest last), unless `idle` is full. Entries are pushed in
/// time order, so the expired ones are a prefix: it is dropped with a single clock read (the
/// profile showed a full `retain` with a clock read per idle connection on every check-in).
fn keep_idle<C>(idle: &mut Vec<Idle<C>>, conn: C, timeout: Duration) {
    let now = Instant::now();
    let expired = idle
        .iter()
        .take_while(|e| now.duration_since(e.since) >= timeout)
        .count();
    idle.drain(..expired);
    if idle.len() < MAX_IDLE_PER_SERVER {
        idle.push(Idle { conn, since: now });
    }
}

/// The newest idle connection of `idle` that is not expired and passes `alive`; the others met
/// on the way are dropped.
fn take_idle<C>(
    idle: &mut Vec<Idle<C>>,
    timeout: Duration,
    mut alive: impl FnMut(&mut C) -> bool,
) -> Option<C> {
    while let Some(mut entry) = idle.pop() {
        if entry.since.elapsed() < timeout && alive(&mut entry.conn) {
            return Some(entry.conn);
        }
    }
    None
}

/// One worker's idle connections to one server (hyper's senders, graygate's own connections),
/// aligned to a cache line pair of its own so that two workers taking and returning
/// connections never write to the same line.
#[repr(align(128))]
#[derive(Default)]
struct WorkerIdle {
    senders: Mutex<Vec<Idle<SendRequest<ProxyBody>>>>,
    own: Mutex<Vec<Idle<h1::Conn>>>,
}

impl Upstreams {
    /// Builds the table. First checks ([`check_upstreams`]) what would otherwise fail at
    /// request time: names missing or taken twice, upstreams without a usable server, addresses
    /// that are not `host:port`.
    pub fn new(
        configs: Vec<UpstreamConfig>,
        timeouts: &Timeouts,
    ) -> Result<Self, UpstreamConfigError> {
        check_upstreams(&configs)?;
        let upstreams = configs
            .iter()
            .map(|cfg| Arc::new(Upstream::new(cfg, timeouts, None)))
            .collect();
        Ok(Upstreams::with(upstreams, timeouts))
    }

    fn with(upstreams: Vec<Arc<Upstream>>, timeouts: &Timeouts) -> Self {
        let mut h2_client = http2::Builder::new(TokioExecutor::new());
        h2_client
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .keep_alive_while_idle(true);
        Upstreams {
            upstreams,
            timeouts: *timeouts,
            connect_timeout: timeouts.connect,
            response_timeout: timeouts.upstream_response,
            response_clock: Arc::new(TickClock::new(timeouts.upstream_response)),
            response_sweeper: AtomicBool::new(false),
            client: http1::Builder::new(),
            h2_client,
        }
    }

    /// The upstream names as a policy may use them, in index order: a retired slot (an upstream
    /// a reload removed) is an empty name, which no policy can name.
    pub fn policy_names(&self) -> Vec<String> {
        self.upstreams
            .iter()
            .map(|u| match u.config {
                Some(_) => u.name.to_string(),
                None => String::new(),
            })
            .collect()
    }

    /// The index of the upstream called `name`: how the policy compiler turns names into the
    /// indexes of a [`crate::policy::Decision`].
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|u| u.config.is_some() && &*u.name == name)
    }

    /// All upstream names, in index order.
    pub fn names(&self) -> Vec<&str> {
        self.upstreams.iter().map(|u| &*u.name).collect()
    }

    /// The name of upstream `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.upstreams.get(index).map(|u| &*u.name)
    }

    /// Number of upstreams.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// True when the table has no upstream.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// The servers (`host:port`) of upstream `index`, in configuration order (none for an
    /// unknown index): what the metrics report connect failures of.
    pub fn servers(&self, index: usize) -> impl Iterator<Item = &str> + '_ {
        self.upstreams
            .get(index)
            .into_iter()
            .flat_map(|u| u.servers.iter().map(|s| &*s.addr))
    }

    /// The timeouts the table was built with: the ones a reload applies, read by every request
    /// (also the client and upstream body timeouts, which the edge enforces).
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Connect failures of server `addr` of upstream `index` since start (for metrics).
    pub fn connect_failures(&self, index: usize, addr: &str) -> Option<u64> {
        let server = self
            .upstreams
            .get(index)?
            .servers
            .iter()
            .find(|s| &*s.addr == addr)?;
        Some(server.connect_failures.load(Ordering::Relaxed))
    }

    /// Where each server of upstream `index` stands (none for an unknown index): for the status
    /// and the metrics.
    pub fn health(&self, index: usize) -> Vec<ServerStatus> {
        self.upstreams
            .get(index)
            .map(|u| u.health.statuses(health::now_ms()))
            .unwrap_or_default()
    }

    /// True when upstream `index` has a server in service (health checks and ejection allow
    /// requests to it); false for an unknown index or a retired slot.
    pub fn in_service(&self, index: usize) -> bool {
        self.upstreams
            .get(index)
            .is_some_and(|u| u.health.any_in_service(health::now_ms()))
    }

    /// True when upstream `index` has active health checks.
    pub fn checked_actively(&self, index: usize) -> bool {
        self.upstreams
            .get(index)
            .is_some_and(|u| u.health.checked_actively())
    }

    /// Starts the active health checks of every upstream that has them and is not checked yet:
    /// one round now, all at once (so this takes the longest check timeout at most), then a
    /// round every interval on tasks of their own. After this, every checked server's first
    /// result is known.
    pub async fn start_health_checks(&self) {
        futures_util::future::join_all(self.upstreams.iter().map(|u| u.health.start())).await;
    }

    /// Phase "upstream" for a request that has nowhere else to go: [`Upstreams::send_with`]
    /// with no fallback and no retry.
    pub async fn send(
        &self,
        index: usize,
        request: Request<ProxyBody>,
        activity: &Activity,
    ) -> Result<Exchange, SendError> {
        self.send_with(index, request, activity, &mut SendOptions::default())
            .await
    }

    /// Phase "upstream": sends `request` to one server of upstream `index` and waits for the
    /// response headers.
    ///
    /// Servers are tried from the round-robin turn on, each at most once: those in service
    /// first (those whose last connect failed after the others), then those out of service,
    /// unless `options.fallback` says the request can go elsewhere: then they are skipped, and
    /// when none is left the request comes back at once ([`UpstreamError::OutOfService`]).
    /// A server is skipped when no connection to it can be established; a pooled connection
    /// found dead before the request was written is replaced by a fresh one. When every server
    /// failed this way, the request comes back in [`SendError::Unreachable`] for the caller to
    /// send elsewhere.
    ///
    /// Once the request has gone out, a failure is final ([`SendError::Failed`]), except once
    /// when the server's connection died before the response headers and the request is
    /// `options.retryable`: a copy of it (made before it went out, when there is another server
    /// to try or a fallback) goes to the next server; with none left it comes back in
    /// [`SendError::Unreachable`] for stable. No response headers within
    /// [`Timeouts::upstream_response`] of the last `activity` is
    /// [`UpstreamError::ResponseTimeout`]. Every answer and failure is told to the upstream's
    /// health (passive ejection).
    ///
    /// The connection goes back to the pool when the response (body included) is complete,
    /// unless it was upgraded (101).
    pub async fn send_with(
        &self,
        index: usize,
        mut request: Request<ProxyBody>,
        activity: &Activity,
        options: &mut SendOptions,
    ) -> Result<Exchange, SendError> {
        let Some(upstream) = self.upstreams.get(index) else {
            return Err(SendError::Unreachable {
                request: Box::new(request),
                error: UpstreamError::AllServersDown {
                    upstream: Arc::from(format!("#{index}")),
                },
            });
        };
        let order = self.attempt_order(upstream, options.fallback);
        if order.is_empty() && !upstream.schedule.is_empty() {
            return Err(SendError::Unreachable {
                request: Box::new(request),
                error: UpstreamError::OutOfService {
                    upstream: upstream.name.clone(),
                },
            });
        }
        // A copy to send again, only where it could go: another server, or stable. Not for
        // graygate's own client, which gives a failed request back whole (`Attempt::SentBack`).
        let may_retry =
            options.retryable && !options.retried && (options.fallback || order.len() > 1);
        if may_retry && options.retry.is_none() && !carries_own(upstream, &request) {
            options.retry = Some(Replay::of(&request));
        }
        let mut last_error = None;
        for server in order.iter().map(|&i| &upstream.servers[i]) {
            match self.try_server(upstream, server, request, activity).await {
                Ok(exchange) => return Ok(self.answered(upstream, server, exchange)),
                Err(Attempt::NotSent(back, error)) if error.is_local() => {
                    // Every other server would fail the same way: no use trying them.
                    return Err(SendError::Unreachable {
                        request: back,
                        error,
                    });
                }
                Err(Attempt::NotSent(back, error)) => {
                    upstream.health.failed(&server.health, &error);
                    request = *back;
                    last_error = Some(error);
                }
                Err(Attempt::SentBack(back, error)) => {
                    upstream.health.failed(&server.health, &error);
                    if may_retry && !options.retried && error.connection_died() {
                        debug!(upstream = %upstream.name, server = %server.addr, error = %error, "the server died under an idempotent request: sending it again");
                        options.retried = true;
                        request = *back;
                        last_error = Some(error);
                        continue;
                    }
                    return Err(SendError::Failed {
                        server: server.addr.clone(),
                        error,
                    });
                }
                Err(Attempt::Sent(error)) => {
                    upstream.health.failed(&server.health, &error);
                    let again = options
                        .retry
                        .take()
                        .filter(|_| error.connection_died())
                        .and_then(Replay::request);
                    match again {
                        Some(again) => {
                            debug!(upstream = %upstream.name, server = %server.addr, error = %error, "the server died under an idempotent request: sending it again");
                            options.retried = true;
                            request = again;
                            last_error = Some(error);
                        }
                        None => {
                            return Err(SendError::Failed {
                                server: server.addr.clone(),
                                error,
                            })
                        }
                    }
                }
            }
        }
        if !upstream.unreachable.swap(true, Ordering::Relaxed) {
            match &last_error {
                Some(e) => {
                    warn!(upstream = %upstream.name, error = %e, "no server of the upstream can be reached")
                }
                None => {
                    warn!(upstream = %upstream.name, "no server of the upstream can be reached")
                }
            }
        }
        Err(SendError::Unreachable {
            request: Box::new(request),
            error: UpstreamError::AllServersDown {
                upstream: upstream.name.clone(),
            },
        })
    }

    /// An answer from `server`: told to the upstream's health, and the upstream's own
    /// "reachable again" logged once.
    fn answered(&self, upstream: &Upstream, server: &Server, exchange: Exchange) -> Exchange {
        upstream.health.answered(
            &server.health,
            exchange.response.status(),
            exchange.headers_after,
        );
        if upstream.unreachable.load(Ordering::Relaxed)
            && upstream.unreachable.swap(false, Ordering::Relaxed)
        {
            info!(upstream = %upstream.name, "upstream reachable again");
        }
        exchange
    }

    /// Which servers to try, in order: from the round-robin turn on, every server with a
    /// weight once; those whose connect failed (and not due for a recheck) after the others;
    /// those out of service last, or not at all when the request can go elsewhere (`skip`).
    fn attempt_order(&self, upstream: &Upstream, skip_out_of_service: bool) -> ServerOrder {
        if upstream.schedule.is_empty() {
            // A retired slot: no server to try.
            return ServerOrder::new();
        }
        let n = upstream.servers.len();
        let turn = upstream.cursor.fetch_add(1, Ordering::Relaxed) % upstream.schedule.len();
        let first = upstream.schedule[turn];
        let now = self.now_ms();
        let mut order = ServerOrder::new();
        let mut later = ServerOrder::new();
        let mut last = ServerOrder::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let server = &upstream.servers[i];
            if server.weight == 0 {
                continue;
            }
            if !server.health.in_service(now) {
                if !skip_out_of_service {
                    last.push(i);
                }
                continue;
            }
            let resting = server.down.load(Ordering::Relaxed)
                && now < server.recheck_at_ms.load(Ordering::Relaxed);
            if resting {
                later.push(i);
            } else {
                order.push(i);
            }
        }
        order.extend(later);
        order.extend(last);
        order
    }

    /// One server: a pooled connection if one is alive, else a new one; then the exchange.
    async fn try_server(
        &self,
        upstream: &Upstream,
        server: &Server,
        mut request: Request<ProxyBody>,
        activity: &Activity,
    ) -> Result<Exchange, Attempt> {
        // The rare paths (a new connection, with its TLS handshake; HTTP/2) are boxed: their
        // futures are large, and every future of the request path that holds one inline is
        // as large and copied as a whole when it moves (a pooled HTTP/1.1 exchange, nearly
        // every request, paid for 11 KB of copies).
        if upstream.transport.protocol().is_http2() {
            return Box::pin(self.try_server_h2(upstream, server, request, activity)).await;
        }
        upstream_protocol::for_http1(&mut request);
        if carries_own(upstream, &request) {
            return self
                .try_server_own(upstream, server, request, activity)
                .await;
        }
        let mut stale_retries = 0;
        loop {
            let pooled = if stale_retries < MAX_STALE_RETRIES {
                server.pool.take()
            } else {
                None
            };
            let is_pooled = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                None => match Box::pin(self.connect(upstream, server)).await {
                    Ok(sender) => sender,
                    Err(error) => return Err(Attempt::NotSent(Box::new(request), error)),
                },
            };
            activity.touch();
            let started = Instant::now();
            match self
                .exchange(sender.try_send_request(request), activity)
                .await
            {
                Ok(response) => {
                    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                        checkin_when_ready(&server.pool, sender);
                    }
                    return Ok(Exchange {
                        response: response.map(UpstreamIncoming::Hyper),
                        server: server.addr.clone(),
                        headers_after: started.elapsed(),
                    });
                }
                Err(ExchangeError::NotSent(back, error)) => {
                    request = *back;
                    if is_pooled {
                        debug!(server = %server.addr, error = %error, "pooled connection was dead, retrying");
                        stale_retries += 1;
                        continue;
                    }
                    debug!(server = %server.addr, error = %error, "new connection closed before the request was sent");
                    return Err(Attempt::NotSent(
                        Box::new(request),
                        UpstreamError::Closed {
                            server: server.addr.clone(),
                        },
                    ));
                }
                Err(error @ (ExchangeError::Timeout | ExchangeError::Failed(_))) => {
                    return Err(self.sent_and_failed(server, error))
                }
            }
        }
    }

    /// One server, on graygate's own HTTP/1.1 client (`super::h1`): a pooled connection if one
    /// is alive, else a new one; then the exchange. A head that could not be written comes back
    /// as on hyper's client (a pooled connection is replaced, a new one is the server's
    /// failure); a pooled connection that closes before any answer is replaced too, for an
    /// idempotent request (the server may not have read it: it closed an idle connection).
    async fn try_server_own(
        &self,
        upstream: &Upstream,
        server: &Server,
        request: Request<ProxyBody>,
        activity: &Activity,
    ) -> Result<Exchange, Attempt> {
        let mut stale_retries = 0;
        loop {
            let pooled = if stale_retries < MAX_STALE_RETRIES {
                server.pool.take_own()
            } else {
                None
            };
            let is_pooled = pooled.is_some();
            let conn = match pooled {
                Some(conn) => conn,
                None => match Box::pin(self.connect_own(upstream, server)).await {
                    Ok(conn) => conn,
                    Err(error) => return Err(Attempt::NotSent(Box::new(request), error)),
                },
            };
            activity.touch();
            let started = Instant::now();
            let home: Arc<dyn h1::Home> = server.pool.clone();
            match conn.exchange(&request, self.response_clock(), home).await {
                Ok(response) => {
                    return Ok(Exchange {
                        response: response.map(UpstreamIncoming::Own),
                        server: server.addr.clone(),
                        headers_after: started.elapsed(),
                    })
                }
                Err(error)
                    if is_pooled
                        && (matches!(error, H1Error::Write(_))
                            || (error.connection_died() && request.method().is_idempotent())) =>
                {
                    debug!(server = %server.addr, error = %error, "pooled connection was dead, retrying");
                    stale_retries += 1;
                }
                Err(H1Error::Write(error)) => {
                    debug!(server = %server.addr, error = %error, "new connection closed before the request was sent");
                    return Err(Attempt::NotSent(
                        Box::new(request),
                        UpstreamError::Closed {
                            server: server.addr.clone(),
                        },
                    ));
                }
                Err(H1Error::ResponseTimeout) => {
                    return Err(Attempt::SentBack(
                        Box::new(request),
                        UpstreamError::ResponseTimeout {
                            server: server.addr.clone(),
                            timeout: self.response_timeout,
                        },
                    ))
                }
                Err(error) => {
                    return Err(Attempt::SentBack(
                        Box::new(request),
                        UpstreamError::Request {
                            server: server.addr.clone(),
                            source: error.into(),
                        },
                    ))
                }
            }
        }
    }

    /// A new plain-TCP connection to `server` for graygate's own client.
    async fn connect_own(
        &self,
        upstream: &Upstream,
        server: &Server,
    ) -> Result<h1::Conn, UpstreamError> {
        match self.open(upstream, server).await? {
            UpstreamIo::Plain(stream) => Ok(h1::Conn::new(stream)),
            // Not chosen for TLS upstreams (`try_server`); a connection that is not plain TCP
            // cannot be used here.
            UpstreamIo::Tls(_) => Err(UpstreamError::Closed {
                server: server.addr.clone(),
            }),
        }
    }

    /// An exchange with `server` that failed after the request went out (either protocol):
    /// no response within the timeout, or the exchange broke.
    fn sent_and_failed(&self, server: &Server, error: ExchangeError) -> Attempt {
        let server = server.addr.clone();
        Attempt::Sent(match error {
            ExchangeError::Failed(source) | ExchangeError::NotSent(_, source) => {
                UpstreamError::Request {
                    server,
                    source: source.into(),
                }
            }
            ExchangeError::Timeout => UpstreamError::ResponseTimeout {
                server,
                timeout: self.response_timeout,
            },
        })
    }

    /// A new HTTP/1.1 connection to `server`.
    async fn connect(
        &self,
        upstream: &Upstream,
        server: &Server,
    ) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let stream = self.open(upstream, server).await?;
        let (sender, conn) = self
            .client
            .handshake::<_, ProxyBody>(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake {
                server: server.addr.clone(),
                source,
            })?;
        let addr = server.addr.clone();
        tokio::spawn(async move {
            // Upgrades: a 101 hands the socket over to the WebSocket tunnel.
            if let Err(e) = conn.with_upgrades().await {
                debug!(server = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A new connection to `server`, TCP then TLS when the upstream has it, within the connect
    /// timeout, with the down/up bookkeeping: a failed TLS handshake marks the server down as a
    /// refused connect does.
    async fn open(
        &self,
        upstream: &Upstream,
        server: &Server,
    ) -> Result<UpstreamIo, UpstreamError> {
        let connect = async {
            let stream = TcpStream::connect(&*server.addr).await.map_err(|source| {
                if super::listen::is_fd_limit(&source) {
                    return UpstreamError::LocalFdLimit {
                        server: server.addr.clone(),
                    };
                }
                UpstreamError::Connect {
                    server: server.addr.clone(),
                    source,
                }
            })?;
            // Requests and their headers are small writes: do not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let Some(tls) = upstream.transport.tls() else {
                return Ok(UpstreamIo::Plain(stream));
            };
            let tls_error = |source| UpstreamError::Tls {
                server: server.addr.clone(),
                source,
            };
            // `check_upstreams` made sure every server of a TLS upstream has a name.
            let name = server
                .tls_name
                .clone()
                .ok_or_else(|| tls_error(io::Error::other("no TLS name for the server")))?;
            match tls.handshake(name, stream).await {
                Ok(stream) => Ok(UpstreamIo::Tls(Box::new(stream))),
                Err(source) => Err(tls_error(source)),
            }
        };
        let started_ms = super::health::now_ms();
        let opened = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(opened) => opened,
            Err(_elapsed) => Err(UpstreamError::ConnectTimeout {
                server: server.addr.clone(),
            }),
        };
        match opened {
            Ok(stream) => {
                if server.down.load(Ordering::Relaxed) {
                    server.down.store(false, Ordering::Relaxed);
                }
                upstream.health.connected(&server.health, started_ms);
                fd_limit_over();
                Ok(stream)
            }
            Err(error) if error.is_local() => {
                fd_limit_hit(&error);
                Err(error)
            }
            Err(error) => {
                self.mark_down(upstream, server, &error);
                Err(error)
            }
        }
    }

    /// One server of an HTTP/2 upstream: the shared connection (made if there is none), then
    /// the exchange. A connection that turns out closed before the request went out is replaced
    /// once.
    async fn try_server_h2(
        &self,
        upstream: &Upstream,
        server: &Server,
        mut request: Request<ProxyBody>,
        activity: &Activity,
    ) -> Result<Exchange, Attempt> {
        upstream_protocol::for_http2(
            &mut request,
            upstream.transport.tls().is_some(),
            &server.addr,
        );
        let mut retried = false;
        loop {
            let (mut sender, is_new) = match server.h2.live() {
                Some(sender) => (sender, false),
                None => match self.connect_h2(upstream, server).await {
                    Ok(sender) => (sender, true),
                    Err(error) => return Err(Attempt::NotSent(Box::new(request), error)),
                },
            };
            activity.touch();
            let started = Instant::now();
            match self
                .exchange(sender.try_send_request(request), activity)
                .await
            {
                Ok(response) => {
                    return Ok(Exchange {
                        response: response.map(UpstreamIncoming::Hyper),
                        server: server.addr.clone(),
                        headers_after: started.elapsed(),
                    })
                }
                Err(ExchangeError::NotSent(back, error)) => {
                    request = *back;
                    if !is_new && !retried {
                        debug!(server = %server.addr, error = %error, "HTTP/2 connection was closed, reconnecting");
                        retried = true;
                        continue;
                    }
                    return Err(Attempt::NotSent(
                        Box::new(request),
                        UpstreamError::Closed {
                            server: server.addr.clone(),
                        },
                    ));
                }
                Err(error @ (ExchangeError::Timeout | ExchangeError::Failed(_))) => {
                    return Err(self.sent_and_failed(server, error))
                }
            }
        }
    }

    /// A sender on a new HTTP/2 connection to `server`, made by one request at a time: the
    /// others wait for it and share it, or fail at once if it could not be made.
    async fn connect_h2(
        &self,
        upstream: &Upstream,
        server: &Server,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let failures = server.h2.failures.load(Ordering::Relaxed);
        let _connecting = server.h2.connecting.lock().await;
        if let Some(sender) = server.h2.live() {
            return Ok(sender);
        }
        if server.h2.failures.load(Ordering::Relaxed) != failures {
            return Err(UpstreamError::ConcurrentConnectFailed {
                server: server.addr.clone(),
            });
        }
        let made = async {
            let stream = self.open(upstream, server).await?;
            let (sender, conn) = self
                .h2_client
                .handshake::<_, ProxyBody>(TokioIo::new(stream))
                .await
                .map_err(|source| UpstreamError::Handshake {
                    server: server.addr.clone(),
                    source,
                })?;
            let addr = server.addr.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(server = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            Ok::<_, UpstreamError>(sender)
        };
        match made.await {
            Ok(sender) => {
                server.h2.set(sender.clone());
                Ok(sender)
            }
            Err(error) => {
                // Out of file descriptors says nothing of the server: the requests waiting for
                // this connect try it themselves.
                if !error.is_local() {
                    server.h2.failed();
                }
                Err(error)
            }
        }
    }

    /// Counts a connect failure; the health logs it once, when the server goes from up to
    /// down.
    fn mark_down(&self, upstream: &Upstream, server: &Server, error: &UpstreamError) {
        server.connect_failures.fetch_add(1, Ordering::Relaxed);
        let recheck = self.now_ms() + DOWN_RECHECK.as_millis() as u64;
        server.recheck_at_ms.store(recheck, Ordering::Relaxed);
        server.down.store(true, Ordering::Relaxed);
        upstream.health.connect_failed(&server.health, error);
    }

    /// Sends on a connection (`sent`: its `try_send_request`) and waits for the response
    /// headers, bounded by the response timeout counted from the last [`Activity`] (so a long
    /// upload is not cut off while it moves), and held while the request waits for the client's
    /// body (the client body timeout bounds that).
    async fn exchange(
        &self,
        sent: impl std::future::Future<
            Output = Result<Response<Incoming>, TrySendError<Request<ProxyBody>>>,
        >,
        activity: &Activity,
    ) -> Result<Response<Incoming>, ExchangeError> {
        tokio::pin!(sent);
        // When the timer last found the request waiting for the client.
        let mut client_was_late = None;
        loop {
            let mut deadline = activity.last() + self.response_timeout;
            if let Some(at) = client_was_late {
                deadline = deadline.max(at + self.response_timeout);
            }
            tokio::select! {
                result = &mut sent => {
                    return match result {
                        Ok(response) => Ok(response),
                        Err(mut e) => match e.take_message() {
                            Some(request) => Err(ExchangeError::NotSent(Box::new(request), e.into_error())),
                            None => Err(ExchangeError::Failed(e.into_error())),
                        },
                    };
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if activity.waits_for_client() {
                        client_was_late = Some(Instant::now());
                    } else if activity.last() + self.response_timeout <= Instant::now() {
                        // Dropping `sent` cancels the request and closes the connection.
                        return Err(ExchangeError::Timeout);
                    }
                }
            }
        }
    }

    /// The response timeout's clock, its sweeper started the first time (on the runtime of the
    /// request that asks: it ends when the table is gone).
    fn response_clock(&self) -> &TickClock {
        if !self.response_sweeper.load(Ordering::Relaxed)
            && !self.response_sweeper.swap(true, Ordering::Relaxed)
        {
            tokio::spawn(ticks::sweep(
                Arc::downgrade(&self.response_clock),
                |clock| clock,
                |_| false,
            ));
        }
        &self.response_clock
    }

    /// The clock of down-server rechecks and health: milliseconds, one origin for every table.
    fn now_ms(&self) -> u64 {
        health::now_ms()
    }
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for u in &self.upstreams {
            let servers: Vec<(&str, u32)> =
                u.servers.iter().map(|s| (&*s.addr, s.weight)).collect();
            list.entry(&(&*u.name, servers));
        }
        list.finish()
    }
}

impl Upstream {
    /// An upstream as `cfg` says, its servers' connect failures carried over from `before` (the
    /// same upstream in the table being replaced) for the servers it had too, so that the
    /// metrics' counters never go down. A server it had too keeps its idle HTTP/1.1 connections
    /// when the upstream is spoken to the same way and the idle timeout stays: a weight changed
    /// or a server drained, added or removed (a runtime change of a shared upstream) does not
    /// close the connections of the other servers.
    fn new(cfg: &UpstreamConfig, timeouts: &Timeouts, before: Option<&Upstream>) -> Upstream {
        let failures_before = |addr: &str| {
            before
                .and_then(|b| b.servers.iter().find(|s| &*s.addr == addr))
                .map_or(0, |s| s.connect_failures.load(Ordering::Relaxed))
        };
        let pool_before = |addr: &str| {
            before
                .filter(|b| b.transport == cfg.transport)
                .and_then(|b| b.servers.iter().find(|s| &*s.addr == addr))
                .filter(|s| s.pool.idle_timeout == timeouts.idle)
                .map(|s| s.pool.clone())
        };
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let addrs: Vec<(Arc<str>, u32)> = cfg
            .servers
            .iter()
            .map(|s| (Arc::from(s.addr.as_str()), s.weight))
            .collect();
        let health = Arc::new(
            UpstreamHealth::new(
                &name,
                &addrs,
                cfg.health.clone(),
                cfg.passive,
                before.map(|b| &*b.health),
            )
            .with_transport(cfg.transport.clone()),
        );
        let servers: Vec<Server> = cfg
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Server {
                addr: addrs[i].0.clone(),
                health: health.server(i).clone(),
                weight: s.weight,
                pool: pool_before(&s.addr).unwrap_or_else(|| {
                    Arc::new(Pool {
                        idle: (0..super::workers::count())
                            .map(|_| WorkerIdle::default())
                            .collect(),
                        idle_timeout: timeouts.idle,
                    })
                }),
                h2: H2Connection::default(),
                tls_name: cfg
                    .transport
                    .tls()
                    .and_then(|tls| tls.server_name(&s.addr).ok()),
                down: AtomicBool::new(false),
                recheck_at_ms: AtomicU64::new(0),
                connect_failures: AtomicU64::new(failures_before(&s.addr)),
            })
            .collect();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let schedule = smooth_schedule(&weights);
        // `check_upstreams` made sure of a server with a weight, which always gets a turn.
        debug_assert!(!schedule.is_empty(), "upstream `{}` has no turn", cfg.name);
        Upstream {
            name,
            config: Some(cfg.clone()),
            transport: cfg.transport.clone(),
            servers,
            schedule: schedule.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
            unreachable: AtomicBool::new(false),
            health,
        }
    }

    /// The slot of an upstream a reload removed: it keeps its index (and its name, for logs),
    /// has no server, and no policy can name it.
    fn retired(name: &Arc<str>) -> Upstream {
        Upstream {
            name: name.clone(),
            config: None,
            transport: Transport::default(),
            servers: Vec::new(),
            schedule: Box::new([]),
            cursor: AtomicUsize::new(0),
            unreachable: AtomicBool::new(false),
            health: Arc::new(UpstreamHealth::new(
                name,
                &[],
                None,
                PassiveHealth::default(),
                None,
            )),
        }
    }
}

impl Drop for Upstream {
    /// Its active checks end with it (a reload removed or rebuilt it, or the table is gone).
    fn drop(&mut self) {
        self.health.stop();
    }
}

/// The upstream table the data plane sends through, swapped whole when the config is reloaded
/// (see the module documentation). Every request loads the current table once per send.
pub struct LiveUpstreams {
    table: ArcSwap<Upstreams>,
}

/// A table built from a reloaded config and not in use yet: what installing it changes.
#[derive(Debug)]
pub struct UpstreamsPlan {
    table: Upstreams,
    /// Upstreams new in the config, appended to the table.
    pub added: Vec<String>,
    /// Upstreams gone from the config: their slots are retired.
    pub removed: Vec<String>,
    /// Upstreams whose servers, `health` or `passive` changed (or every kept one, when the idle
    /// timeout changed): rebuilt with new connection pools, their servers keeping their health.
    pub changed: Vec<String>,
    /// True when the connect, response or idle timeout differs from the table in use.
    pub timeouts_changed: bool,
}

impl UpstreamsPlan {
    /// The names a policy may use once the plan is installed ([`Upstreams::policy_names`]).
    pub fn policy_names(&self) -> Vec<String> {
        self.table.policy_names()
    }

    /// Starts the active health checks of the upstreams the plan adds or rebuilds (see
    /// [`Upstreams::start_health_checks`]), so that their servers' first results are known
    /// before the plan is installed and a request is sent to them.
    pub async fn start_health_checks(&self) {
        self.table.start_health_checks().await;
    }

    /// True when installing it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.timeouts_changed
    }
}

impl LiveUpstreams {
    /// The table `configs` describe (see [`Upstreams::new`]).
    pub fn new(
        configs: Vec<UpstreamConfig>,
        timeouts: &Timeouts,
    ) -> Result<Self, UpstreamConfigError> {
        Ok(LiveUpstreams::from(Upstreams::new(configs, timeouts)?))
    }

    /// The table in use now.
    pub fn current(&self) -> Arc<Upstreams> {
        self.table.load_full()
    }

    /// The table in use now, for a short read that does not wait on anything (no reference
    /// count is touched; do not hold it across an `.await`).
    pub fn load(&self) -> arc_swap::Guard<Arc<Upstreams>> {
        self.table.load()
    }

    /// Phase "upstream" on the table in use now: see [`Upstreams::send`].
    pub async fn send(
        &self,
        index: usize,
        request: Request<ProxyBody>,
        activity: &Activity,
    ) -> Result<Exchange, SendError> {
        self.current().send(index, request, activity).await
    }

    /// Phase "upstream" on the table in use now: see [`Upstreams::send_with`].
    pub async fn send_with(
        &self,
        index: usize,
        request: Request<ProxyBody>,
        activity: &Activity,
        options: &mut SendOptions,
    ) -> Result<Exchange, SendError> {
        self.current()
            .send_with(index, request, activity, options)
            .await
    }

    /// Starts the active health checks of the table in use (see
    /// [`Upstreams::start_health_checks`]): at start, before the traffic listeners open.
    pub async fn start_health_checks(&self) {
        self.current().start_health_checks().await;
    }

    /// The table a reloaded config describes, with stable indexes: every upstream still in
    /// `configs` keeps its index (and, when its servers and the idle timeout stay, its pools and
    /// state), new ones are appended (into a retired slot of the same name, if there is one),
    /// removed ones are retired. Nothing changes until [`LiveUpstreams::install`].
    pub fn plan(
        &self,
        configs: &[UpstreamConfig],
        timeouts: &Timeouts,
    ) -> Result<UpstreamsPlan, UpstreamConfigError> {
        check_upstreams(configs)?;
        let old = self.current();
        let keep_pools = old.timeouts.idle == timeouts.idle;
        let mut plan = UpstreamsPlan {
            table: Upstreams::with(Vec::new(), timeouts),
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            timeouts_changed: old.timeouts != *timeouts,
        };
        let mut slots = Vec::with_capacity(old.upstreams.len() + configs.len());
        for u in &old.upstreams {
            let now = configs.iter().find(|c| *c.name == *u.name);
            slots.push(match (&u.config, now) {
                (Some(was), Some(cfg)) if was == cfg && keep_pools => u.clone(),
                (Some(_), Some(cfg)) => {
                    plan.changed.push(cfg.name.clone());
                    Arc::new(Upstream::new(cfg, timeouts, Some(u)))
                }
                (None, Some(cfg)) => {
                    plan.added.push(cfg.name.clone());
                    Arc::new(Upstream::new(cfg, timeouts, None))
                }
                (Some(_), None) => {
                    plan.removed.push(u.name.to_string());
                    Arc::new(Upstream::retired(&u.name))
                }
                (None, None) => u.clone(),
            });
        }
        for cfg in configs {
            if !old.upstreams.iter().any(|u| *u.name == *cfg.name) {
                plan.added.push(cfg.name.clone());
                slots.push(Arc::new(Upstream::new(cfg, timeouts, None)));
            }
        }
        plan.table.upstreams = slots;
        Ok(plan)
    }

    /// Makes a planned table the one every new send uses. The active checks of the upstreams
    /// it removed or rebuilt stop; those of upstreams it added start now if the plan's
    /// [`UpstreamsPlan::start_health_checks`] did not start them before.
    pub fn install(&self, plan: UpstreamsPlan) {
        let new = Arc::new(plan.table);
        let old = self.table.swap(new.clone());
        for u in &old.upstreams {
            if !new.upstreams.iter().any(|n| Arc::ptr_eq(n, u)) {
                u.health.stop();
            }
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move { new.start_health_checks().await });
        }
    }
}

impl From<Upstreams> for LiveUpstreams {
    fn from(table: Upstreams) -> Self {
        LiveUpstreams {
            table: ArcSwap::from_pointee(table),
        }
    }
}

impl Drop for LiveUpstreams {
    /// The active checks of the table in use end with the data plane.
    fn drop(&mut self) {
        for u in &self.table.load().upstreams {
            u.health.stop();
        }
    }
}

impl std::fmt::Debug for LiveUpstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.current().fmt(f)
    }
}

/// The outcome of one server attempt.
enum Attempt {
    /// Nothing was sent: the request comes back for the next server.
    NotSent(Box<Request<ProxyBody>>, UpstreamError),
    /// The request went out: final.
    Sent(UpstreamError),
    /// The request went out on graygate's own client and failed; having no body, it is still
    /// whole, and may go again where a copy would have ([`SendOptions::retry`]).
    SentBack(Box<Request<ProxyBody>>, UpstreamError),
}

/// The outcome of one exchange on one connection.
enum ExchangeError {
    NotSent(Box<Request<ProxyBody>>, hyper::Error),
    Failed(hyper::Error),
    Timeout,
}

impl Pool {
    /// The idle connections of the worker the caller runs on.
    fn worker(&self) -> &WorkerIdle {
        &self.idle[super::workers::shard(self.idle.len())]
    }

    /// The idle hyper senders of the worker the caller runs on.
    fn worker_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle<SendRequest<ProxyBody>>>> {
        let idle = &self.worker().senders;
        idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The idle connections of graygate's own client of the worker the caller runs on.
    fn worker_own(&self) -> std::sync::MutexGuard<'_, Vec<Idle<h1::Conn>>> {
        let own = &self.worker().own;
        own.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live idle connection, if any. Expired and closed ones met on the way are dropped.
    fn take(&self) -> Option<SendRequest<ProxyBody>> {
        take_idle(&mut self.worker_idle(), self.idle_timeout, |sender| {
            !sender.is_closed() && sender.is_ready()
        })
    }

    /// Keeps `sender` for reuse, unless the pool is full.
    fn put(&self, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        // Closed ones are skipped by `take`.
        keep_idle(&mut self.worker_idle(), sender, self.idle_timeout);
    }
}

impl Pool {
    /// A live idle connection of graygate's own client, if any. Expired and dead ones met on
    /// the way are dropped.
    fn take_own(&self) -> Option<h1::Conn> {
        take_idle(
            &mut self.worker_own(),
            self.idle_timeout,
            h1::Conn::is_reusable,
        )
    }
}

impl h1::Home for Pool {
    /// Keeps `conn` for reuse, unless the pool is full (expired ones dropped as in `put`).
    fn check_in(&self, conn: h1::Conn) {
        keep_idle(&mut self.worker_own(), conn, self.idle_timeout);
    }
}

/// True when `upstream` sends `request` on graygate's own client (plain TCP, HTTP/1.1).
fn carries_own(upstream: &Upstream, request: &Request<ProxyBody>) -> bool {
    upstream.transport.protocol() == upstream_protocol::Protocol::Http1
        && upstream.transport.tls().is_none()
        && h1_carries(request)
}

/// True when graygate's own HTTP/1.1 client carries `request` (`super::h1`): an HTTP/1.1
/// request without a body that asks for no upgrade. The rest goes on hyper's.
fn h1_carries(request: &Request<ProxyBody>) -> bool {
    request.version() == http::Version::HTTP_11
        && request.body().is_end_stream()
        && *request.method() != http::Method::CONNECT
        && !request.headers().contains_key(http::header::UPGRADE)
}

/// Returns the connection to the pool once it can take the next request: HTTP/1 carries one
/// exchange at a time, so that is when the response body has been read to its end. A
/// connection that closes instead (the client went away mid-body, `Connection: close`) is
/// dropped.
fn checkin_when_ready(pool: &Arc<Pool>, mut sender: SendRequest<ProxyBody>) {
    let pool = pool.clone();
    tokio::spawn(async move {
        if sender.ready().await.is_ok() {
            pool.put(sender);
        }
    });
}

/// Smooth weighted round robin (nginx): every turn, each server gains its weight, the one with
/// the most goes next and pays the total. For 5:1:1 this gives `a a b a c a a` rather than
/// `a a a a a b c`. Weights are reduced by their gcd (3:1 and 300:100 are one schedule) and
/// scaled down if their sum exceeds [`MAX_SCHEDULE`]. Servers of weight 0 never appear.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
    let total: u64 = w.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    if total > MAX_SCHEDULE {
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    let g = w.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    for x in &mut w {
        *x /= g;
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for (i, &weight) in w.iter().enumerate() {
            if weight == 0 {
                continue;
            }
            current[i] += weight as i64;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
            schedule.push(b);
        }
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `host:port` with a non-empty host and a numeric port (`[v6]:port` for IPv6).
pub fn check_host_port(addr: &str) -> Result<(), ServerError> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(ServerError::NoPort {
            addr: addr.to_string(),
        });
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && !host.contains(|c: char| c == ':' || c.is_whitespace())
    };
    if host_ok && port.parse::<u16>().is_ok() {
        Ok(())
    } else {
        Err(ServerError::NotHostPort {
            addr: addr.to_string(),
        })
    }
}

/// When a request last made progress: it went out, or a chunk of its body did. The upstream
/// response timeout counts from here, so that it bounds a silent upstream and a stalled
/// upload, but not an upload that is still moving. While the request waits for the client's
/// body ([`Activity::wait_for_client`]), the upstream is not late: the client body timeout
/// applies instead.
#[derive(Debug)]
pub struct Activity {
    /// Origin of `last_ms`.
    epoch: Instant,
    /// Milliseconds from `epoch` to the last progress.
    last_ms: AtomicU64,
    /// True while the upstream side asked for more of the request body and the client has not
    /// sent it yet.
    waiting_for_client: AtomicBool,
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_for_client: AtomicBool::new(false),
        }
    }

    /// Says whether the request now waits for the client's body (set by the body as it is
    /// polled).
    pub fn wait_for_client(&self, waiting: bool) {
        self.waiting_for_client.store(waiting, Ordering::Relaxed);
    }

    /// True while the request waits for the client's body.
    pub fn waits_for_client(&self) -> bool {
        self.waiting_for_client.load(Ordering::Relaxed)
    }

    /// Records progress now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the last progress happened.
    pub fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// A request body that records [`Activity`] for every chunk that flows; otherwise passes the
/// body through untouched (no buffering, same size hint).
#[derive(Debug)]
pub struct TrackedBody<B> {
    /// The client's body.
    inner: B,
    /// Shared with the exchange that enforces the response timeout.
    activity: Arc<Activity>,
}

impl<B> TrackedBody<B> {
    /// Wraps `inner`, reporting its progress to `activity`.
    pub fn new(inner: B, activity: Arc<Activity>) -> Self {
        TrackedBody { inner, activity }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.activity.touch();
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn counts(schedule: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in schedule {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[300, 100]), vec![0, 0, 1, 0]);
    }

    #[test]
    fn zero_weight_never_scheduled_and_all_zero_is_empty() {
        assert_eq!(smooth_schedule(&[0, 2, 0]), vec![1]);
        assert!(smooth_schedule(&[0, 0]).is_empty());
        assert!(smooth_schedule(&[]).is_empty());
    }

    #[test]
    fn huge_weights_are_scaled_keeping_the_ratio() {
        let s = smooth_schedule(&[u32::MAX, u32::MAX / 3, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        let c = counts(&s, 3);
        assert!(c[2] >= 1, "a tiny weight still gets a turn");
        let ratio = c[0] as f64 / c[1] as f64;
        assert!((ratio - 3.0).abs() < 0.01, "ratio {ratio}");
    }

    #[test]
    fn host_port_validation() {
        for ok in ["127.0.0.1:80", "svc.internal:8080", "[::1]:443"] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            ":80",
            "host:http",
            "::1:80",
            "[::1]",
            "[zz]:80",
            "h:70000",
            " h:80",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_host_port("127.0.0.1").unwrap_err().to_string(),
            "`127.0.0.1` has no port: write host:port"
        );
        assert_eq!(
            check_host_port("::1:80").unwrap_err().to_string(),
            "`::1:80` is not host:port"
        );
    }

    #[test]
    fn server_lines_parse_with_their_weight() {
        let parse = |text: &str| text.parse::<ServerConfig>();
        assert_eq!(parse("h:1"), Ok(server("h:1", 1)));
        assert_eq!(
            parse("  [::1]:8080   weight=1000 "),
            Ok(server("[::1]:8080", 1000))
        );
        let error = |text: &str| parse(text).unwrap_err().to_string();
        assert_eq!(error(" "), "empty server");
        assert_eq!(error("h"), "`h` has no port: write host:port");
        assert_eq!(error(":80"), "`:80` is not host:port");
        assert_eq!(
            error("h:1 weight=0"),
            "weight `0` is not a whole number from 1 to 1000"
        );
        assert_eq!(
            error("h:1 weight=1001"),
            "weight `1001` is not a whole number from 1 to 1000"
        );
        assert_eq!(
            error("h:1 backup"),
            "unknown server option `backup` (known: weight=N)"
        );
    }

    fn server(addr: &str, weight: u32) -> ServerConfig {
        ServerConfig {
            addr: addr.into(),
            weight,
        }
    }

    fn upstream(name: &str, servers: &[ServerConfig]) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            servers: servers.to_vec(),
            ..UpstreamConfig::default()
        }
    }

    #[test]
    fn config_errors_name_the_upstream_and_the_field() {
        let t = Timeouts::default();
        let error = |configs: Vec<UpstreamConfig>| {
            let Err(e) = Upstreams::new(configs, &t) else {
                panic!("accepted");
            };
            (e.field(), e.to_string())
        };
        assert_eq!(
            error(vec![
                upstream("a", &[server("h:1", 1)]),
                upstream("a", &[server("h:2", 1)]),
            ]),
            (
                "upstreams[1].name".into(),
                "upstream `a` is defined twice".into()
            )
        );
        assert_eq!(
            error(vec![upstream("b", &[server("h:1", 0)])]),
            (
                "upstreams[0].servers".into(),
                "upstream `b` needs at least one server with a weight above 0".into()
            )
        );
        assert_eq!(
            error(vec![upstream("b", &[])]),
            (
                "upstreams[0].servers".into(),
                "upstream `b` needs at least one server with a weight above 0".into()
            )
        );
        assert_eq!(
            error(vec![
                upstream("ok", &[server("h:1", 1)]),
                upstream("c", &[server("h:1", 1), server("nohost", 1)]),
            ]),
            (
                "upstreams[1].servers[1]".into(),
                "`nohost` has no port: write host:port".into()
            )
        );
        assert_eq!(
            error(vec![upstream(" ", &[server("h:1", 1)])]),
            (
                "upstreams[0].name".into(),
                "an upstream needs a name".into()
            )
        );
        // A drained server next to a live one is fine.
        assert!(check_upstreams(&[upstream("d", &[server("h:1", 0), server("h:2", 1)])]).is_ok());
    }

    #[test]
    fn names_and_indexes() {
        let u = Upstreams::new(
            vec![
                UpstreamConfig {
                    name: "stable".into(),
                    servers: vec![server("h:1", 1)],
                    ..UpstreamConfig::default()
                },
                UpstreamConfig {
                    name: "canary".into(),
                    servers: vec![server("h:2", 1)],
                    ..UpstreamConfig::default()
                },
            ],
            &Timeouts::default(),
        )
        .unwrap();
        assert_eq!(u.names(), vec!["stable", "canary"]);
        assert_eq!(u.index_of("canary"), Some(1));
        assert_eq!(u.index_of("nope"), None);
        assert_eq!(u.name(0), Some("stable"));
        assert_eq!(u.len(), 2);
    }

    fn config(name: &str, addrs: &[&str]) -> UpstreamConfig {
        upstream(
            name,
            &addrs.iter().map(|a| server(a, 1)).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn a_server_that_stays_keeps_its_pool_when_another_is_drained_or_weighted() {
        let t = Timeouts::default();
        let live = LiveUpstreams::new(vec![config("a", &["h:1", "h:2"])], &t).unwrap();
        let before = live.current();
        let plan = live
            .plan(&[upstream("a", &[server("h:1", 3), server("h:2", 0)])], &t)
            .unwrap();
        assert_eq!(plan.changed, vec!["a".to_string()]);
        live.install(plan);
        let after = live.current();
        for i in 0..2 {
            assert!(Arc::ptr_eq(
                &before.upstreams[0].servers[i].pool,
                &after.upstreams[0].servers[i].pool
            ));
        }
        // Another idle timeout, or another transport, gets new pools.
        let idle = Timeouts {
            idle: Duration::from_secs(5),
            ..t
        };
        let plan = live.plan(&[config("a", &["h:1", "h:2"])], &idle).unwrap();
        live.install(plan);
        assert!(!Arc::ptr_eq(
            &after.upstreams[0].servers[0].pool,
            &live.current().upstreams[0].servers[0].pool
        ));
    }

    #[test]
    fn a_reload_keeps_every_index_appends_new_upstreams_and_retires_removed_ones() {
        let t = Timeouts::default();
        let live = LiveUpstreams::new(
            vec![
                config("a", &["h:1"]),
                config("b", &["h:2"]),
                config("c", &["h:3"]),
            ],
            &t,
        )
        .unwrap();
        let before = live.current();
        before.upstreams[0].servers[0]
            .connect_failures
            .store(4, Ordering::Relaxed);

        // `b` removed, `c` with another server, `d` new, `a` as it was; order in the file
        // does not matter.
        let plan = live
            .plan(
                &[
                    config("d", &["h:4"]),
                    config("c", &["h:5"]),
                    config("a", &["h:1"]),
                ],
                &t,
            )
            .unwrap();
        assert_eq!(
            (
                &plan.added,
                &plan.removed,
                &plan.changed,
                plan.timeouts_changed
            ),
            (
                &vec!["d".to_string()],
                &vec!["b".to_string()],
                &vec!["c".to_string()],
                false
            )
        );
        assert_eq!(plan.policy_names(), vec!["a", "", "c", "d"]);
        live.install(plan);
        let after = live.current();
        assert!(
            Arc::ptr_eq(&before.upstreams[0], &after.upstreams[0]),
            "`a` is kept whole"
        );
        assert_eq!(
            after.index_of("b"),
            None,
            "a retired slot has no name a policy can use"
        );
        assert_eq!(after.name(1), Some("b"), "but keeps its name for logs");
        assert_eq!(after.servers(1).count(), 0);
        assert_eq!(after.servers(2).collect::<Vec<_>>(), vec!["h:5"]);
        assert_eq!(after.index_of("d"), Some(3));

        // `b` back takes its old slot; nothing else moves.
        let plan = live
            .plan(
                &[
                    config("a", &["h:1"]),
                    config("b", &["h:6"]),
                    config("c", &["h:5"]),
                    config("d", &["h:4"]),
                ],
                &t,
            )
            .unwrap();
        assert_eq!(plan.added, vec!["b".to_string()]);
        assert_eq!(plan.policy_names(), vec!["a", "b", "c", "d"]);
        assert!(!plan.is_empty());
        live.install(plan);
        let same = live
            .plan(
                &[
                    config("a", &["h:1"]),
                    config("b", &["h:6"]),
                    config("c", &["h:5"]),
                    config("d", &["h:4"]),
                ],
                &t,
            )
            .unwrap();
        assert!(same.is_empty(), "nothing changed");

        // Another idle timeout rebuilds every pool, keeping the connect failures counted.
        let idle = Timeouts {
            idle: Duration::from_secs(5),
            ..t
        };
        let plan = live
            .plan(
                &[
                    config("a", &["h:1"]),
                    config("b", &["h:6"]),
                    config("c", &["h:5"]),
                    config("d", &["h:4"]),
                ],
                &idle,
            )
            .unwrap();
        assert!(plan.timeouts_changed);
        assert_eq!(plan.changed, vec!["a", "b", "c", "d"]);
        live.install(plan);
        assert_eq!(live.current().connect_failures(0, "h:1"), Some(4));

        let e = live
            .plan(&[config("a", &[]), config("a", &["h:1"])], &t)
            .unwrap_err();
        assert_eq!(e.field(), "upstreams[0].servers");
    }

    #[test]
    fn another_protocol_is_a_changed_upstream_with_new_connections() {
        use crate::proxy::Protocol;
        let t = Timeouts::default();
        let live = LiveUpstreams::new(vec![config("a", &["h:1"])], &t).unwrap();
        let mut h2c = config("a", &["h:1"]);
        h2c.transport = Transport::new(Protocol::H2c, None).unwrap();
        let plan = live.plan(std::slice::from_ref(&h2c), &t).unwrap();
        assert_eq!(plan.changed, vec!["a".to_string()]);
        live.install(plan);
        assert!(live.plan(&[h2c], &t).unwrap().is_empty(), "as before");
    }

    #[tokio::test]
    async fn a_retired_slot_gives_the_request_back() {
        let t = Timeouts::default();
        let live =
            LiveUpstreams::new(vec![config("a", &["h:1"]), config("b", &["h:2"])], &t).unwrap();
        live.install(live.plan(&[config("b", &["h:2"])], &t).unwrap());
        let req = Request::new(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        match live.send(0, req, &Activity::new()).await {
            Err(SendError::Unreachable {
                error: UpstreamError::AllServersDown { upstream },
                ..
            }) => assert_eq!(&*upstream, "a"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Five requests at once to an HTTP/2 server whose TLS handshake never completes: one
    /// connect is tried, the requests that waited for it fail over without trying again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_connect_at_a_time_to_an_http2_server() {
        use crate::proxy::{PemFile, Protocol, TlsOptions};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = TlsOptions {
            ca: Some(PemFile {
                path: "ca.pem".into(),
                contents: ca.pem().into_bytes(),
            }),
            ..TlsOptions::default()
        };
        let transport = Transport::new(Protocol::H2, Some(tls)).unwrap();
        let t = Timeouts {
            connect: Duration::from_secs(1),
            ..Timeouts::default()
        };
        let table = Arc::new(
            Upstreams::new(
                vec![UpstreamConfig {
                    name: "h2".into(),
                    servers: vec![server(&addr, 1)],
                    transport,
                    ..UpstreamConfig::default()
                }],
                &t,
            )
            .unwrap(),
        );
        let sends: Vec<_> = (0..5)
            .map(|_| {
                let table = table.clone();
                tokio::spawn(async move {
                    let req = Request::new(
                        http_body_util::Empty::<Bytes>::new()
                            .map_err(|never| match never {})
                            .boxed(),
                    );
                    table.send(0, req, &Activity::new()).await
                })
            })
            .collect();
        for send in sends {
            let result = tokio::time::timeout(Duration::from_secs(30), send)
                .await
                .expect("answered")
                .unwrap();
            assert!(
                matches!(result, Err(SendError::Unreachable { .. })),
                "{result:?}"
            );
        }
        assert_eq!(table.connect_failures(0, &addr), Some(1));
        holder.abort();
    }

    #[tokio::test]
    async fn unknown_index_gives_the_request_back() {
        let u = Upstreams::new(vec![], &Timeouts::default()).unwrap();
        let req = Request::new(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        let activity = Activity::new();
        match u.send(3, req, &activity).await {
            Err(SendError::Unreachable {
                error: UpstreamError::AllServersDown { .. },
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
