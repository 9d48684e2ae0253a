//! The data plane: accepts client connections, asks the policy where each request goes, and
//! proxies it to the chosen version of the service, falling back to the stable version when a
//! canary cannot be reached.
//!
//! The policy core knows nothing about sockets; this module knows nothing about rules. They meet
//! at one question, [`Router::route`], which the gateway answers from the live policy.
//!
//! # The phases of a request
//! 1. **Accept** ([`serve`], [`serve_front`]): one task per client connection, on the worker
//!    whose listening socket the kernel queued it on (`workers`), at most
//!    [`ProxyConfig::connections`] at once (more wait in the listen backlog). On a TLS
//!    listener the handshake first (SNI picks the certificate, ALPN the protocol); on a plain
//!    one the first bytes tell HTTP/2 with prior knowledge from HTTP/1.1. HTTP/1.1 with
//!    keep-alive, or HTTP/2 where every stream is a request of its own. The request headers
//!    must arrive within [`Timeouts::header`] and fit in [`ProxyConfig::max_header_bytes`]
//!    (hyper answers 431 otherwise). HTTP/1.1 requests without a body, on plain TCP or over
//!    TLS, are read and answered by graygate's own loop (`server/http1`); the first request it
//!    does not take moves the connection to hyper's server for good.
//! 2. **Client IP** ([`ClientIpConfig::resolve`]): the peer, or the client behind our own trusted
//!    proxies. Rules match on it, so a header from an untrusted peer is never believed.
//! 3. **Route** ([`Router::route`]): first the edge (`edge`) refuses what cannot be proxied
//!    safely (two `Host` headers, none on HTTP/1.1, a transfer coding other than `chunked`:
//!    400/501, connection closed) and makes the request canonical (path, host), so that the
//!    policy routes on what the upstream will see. Then the request facts (host, path, query,
//!    headers, client IP, a random number) go to the policy. No route: 404.
//! 4. **Rewrite** (`forward`): hop-by-hop headers removed, `X-Forwarded-For` appended,
//!    `X-Real-IP` set, URI in origin-form, `Host` kept as the edge left it. Only a WebSocket
//!    upgrade keeps its `Upgrade` header; any other (`h2c`) is proxied as a plain request.
//! 5. **Upstream** ([`Upstreams`]): weighted round robin over the servers of the chosen version,
//!    pooled keep-alive connections (HTTP/1.1), or one shared connection per server (HTTP/2:
//!    `h2` over TLS, `h2c`), plain or TLS ([`Transport`]); toward HTTP/2, `Host` becomes
//!    `:authority` and a client's `TE: trailers` is kept. Servers out of service (health
//!    checks, passive ejection) are skipped; a version with none in service sends the request
//!    to stable before any connect. A server that cannot be connected to (TCP or TLS) is
//!    skipped; when no server of a canary can be reached, the request goes to the stable
//!    version instead (the request body has not started to flow at that point, so nothing is
//!    lost). A bodiless `GET`, `HEAD` or `OPTIONS` whose server dies before answering is sent
//!    once more, to another server or to stable. Nothing reachable: 502. No response headers in
//!    time: 504.
//! 6. **Respond**: the response is rewritten (hop-by-hop headers removed, and the optional
//!    [`ProxyConfig::response_version_header`] set) and its body streamed back as it arrives. A
//!    `101 Switching Protocols` (WebSocket) turns the two connections into a byte tunnel. A
//!    request body that stalls is answered 408 ([`Timeouts::client_body`]); a response body that
//!    stalls closes the client connection ([`Timeouts::upstream_body`]).
//! 7. **Observe** ([`Observer::on_response`]): one record per request for metrics and the access
//!    log, when the response body is done (sent or abandoned), so that it carries the bytes sent
//!    and the whole duration. The observer also hears of every connection opening and closing.
//!
//! Bodies are never buffered: a request body flows to the upstream as the client sends it, a
//! response body flows back as the upstream sends it. (A mirrored request keeps a copy of its
//! body on the way, up to the mirror's `max_body`: see `mirror`.)
//!
//! Beside phase 5, a service with a mirror ([`Router::mirror`]) sends a copy of a share of its
//! requests to another version, fire and forget (`mirror`).
//!
//! # Files
//! - `client_ip`: which address a request comes from.
//! - `edge`: what a request must be to be proxied, its canonical form, and the body timeouts.
//! - `upstream`: the upstream table, weighted round robin, connection pools, connect failover.
//! - `health`: which servers are in service: active checks (`health/probe`), passive
//!   ejection, their log lines.
//! - `retry`: the copy of an idempotent request that is sent again when its server died.
//! - `upstream_tls`: TLS toward upstreams: verification, SNI, client certificates, ALPN.
//! - `upstream_protocol`: HTTP/1.1 or HTTP/2 toward upstreams: the shared HTTP/2 connection and
//!   the request's shape on each.
//! - `forward`: header and URI rewriting in both directions.
//! - `mirror`: traffic mirroring: copies sent to a mirror version, their limits, and the
//!   comparison of the two answers.
//! - `listen`: listening sockets (backlog), connection limits, accept paused when out of file
//!   descriptors; shared by every listener, the admin and metrics ones too.
//! - `server`: the listener, per-connection serving, the request phases above, graceful
//!   shutdown; `server/http1`: graygate's own HTTP/1.1 loop for plain and TLS connections, which
//!   reads bodiless requests and writes their answers itself and hands everything else to
//!   hyper's server with the bytes it read.
//! - `h1`: graygate's own HTTP/1.1 client for bodiless requests to plain-TCP upstreams.
//! - `workers`: the data plane's worker threads, a single-threaded runtime each, and which
//!   listening socket each serves.
//! - `protocol`: which HTTP a client connection speaks (ALPN, or the HTTP/2 preface).
//! - `http2`: HTTP/2 to clients: the flood limits, `:authority` and `Host`.
//! - `tls`: TLS termination: certificates by SNI, reloaded without a restart, the redirect to
//!   HTTPS.

mod client_ip;
mod edge;
mod forward;
mod h1;
mod health;
pub mod http2;
pub mod listen;
pub mod mirror;
pub mod protocol;
mod retry;
mod server;
mod ticks;
pub mod tls;
mod upstream;
mod upstream_protocol;
mod upstream_tls;
pub mod workers;

pub use client_ip::{ClientIpConfig, ClientIpMode, X_FORWARDED_FOR, X_REAL_IP};
pub use edge::{
    normalize_host, normalize_path, ClientBodyError, ClientFault, Refusal, UnsupportedCoding,
    UpstreamBodyStalled,
};
pub use forward::DEFAULT_VERSION_HEADER;
pub use health::{
    HealthCheck, HealthConfigError, PassiveHealth, ProbeError, ServerState, ServerStatus,
    DEFAULT_HEALTH_PATH,
};
pub use http2::Http2Settings;
pub use listen::{bind, bind_each, ConnectionLimit};
pub use mirror::{
    Comparison, MirrorEvent, MirrorRecord, MirrorTable, MirrorTarget, SkipReason, MIRROR_HEADER,
};
pub use retry::Replay;
pub use server::{
    serve, serve_front, Draining, Front, Observer, ProxyConfig, RequestRecord, Timeouts,
    DEFAULT_MAX_HEADER_BYTES, HANDOVER_LINGER,
};
pub use tls::TlsTerminator;
pub use upstream::local_fd_limit_failures;
pub use upstream::{
    check_host_port, check_upstreams, Activity, Exchange, ExchangeFailure, LiveUpstreams,
    SendError, SendOptions, ServerConfig, ServerError, TrackedBody, UpstreamConfig,
    UpstreamConfigError, UpstreamError, UpstreamIncoming, Upstreams, UpstreamsPlan, MAX_WEIGHT,
};
pub use upstream_protocol::{Protocol, TeTrailers, Transport, TransportError};
pub use upstream_tls::{PemFile, TlsError, TlsOptions, UpstreamTls};

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

use crate::policy::{Decision, RequestFacts};

/// Any error a body can end with: hyper's own, or graygate's ([`ClientBodyError`],
/// [`UpstreamBodyStalled`]) when the edge cuts a stalled or broken body off.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the proxy hands to hyper in both directions: a client's streaming body, an
/// upstream's streaming body, or a short answer of graygate's own. Boxed so that HTTP/2 and TLS
/// can be added later without changing a signature; its error is boxed so that graygate can end
/// a body with an error of its own (a timeout), which hyper's error type cannot carry.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// The routing question the data plane asks for every request; the gateway answers it from the
/// live policy.
pub trait Router: Send + Sync + 'static {
    /// Called once per request, after the client IP is resolved. The answer is the policy's
    /// [`Decision`] as it is: where the request goes (the upstream of the chosen version, and
    /// the stable one to fall back to when that cannot be reached), and the typed reason that
    /// metrics and the access log read, so that nothing is formatted per request. `None` -> no
    /// route: graygate answers 404 with a short body.
    ///
    /// The future may wait (a store lookup the policy needs), and the request waits with it: it
    /// should answer quickly and fail safe (to stable) rather than block.
    fn route<'a>(
        &'a self,
        facts: RequestFacts<'a>,
    ) -> Pin<Box<dyn Future<Output = Option<Decision>> + Send + 'a>>;

    /// Called once per routed request when its answer is known (the upstream's response headers,
    /// or graygate's own 502/504), before the body flows: what the rollout analysis compares.
    /// Runs on the request path: count, do not wait.
    fn answered(&self, decision: &Decision, answer: Answer) {
        let _ = (decision, answer);
    }

    /// Called once per routed request, after [`Router::route`]: the mirror of the decided
    /// service, if it has one (see `mirror`). Runs on the request path: a lookup, no
    /// allocation; `None` (the default) costs nothing.
    fn mirror(&self, decision: &Decision) -> Option<std::sync::Arc<MirrorTarget>> {
        let _ = decision;
        None
    }
}

/// How a routed request was answered, for [`Router::answered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The status sent to the client.
    pub status: u16,
    /// The answer failed the version the request was meant for whatever its status: graygate
    /// answered 502/504 itself, or the chosen version could not be reached and stable answered.
    pub failed: bool,
    /// Stable answered instead of the chosen version (it could not be reached, or had no server
    /// in service): `failed` is set too.
    pub fell_back: bool,
    /// From the request headers being read to the answer's headers.
    pub latency: std::time::Duration,
}
