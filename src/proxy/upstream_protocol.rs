//! How graygate speaks to the servers of an upstream: HTTP/1.1 or HTTP/2, over TCP or TLS
//! (`protocol = "http1" | "h2" | "h2c"`, `tls`), and what a request must look like on each.
//!
//! - **One shared HTTP/2 connection per server.** An HTTP/2 connection carries any number of
//!   requests at once, so instead of the HTTP/1 pool every server of an `h2` or `h2c` upstream
//!   has one [`H2Connection`]: a sender that every request clones, loaded without a lock. Only a
//!   request that finds it missing or closed takes the connect lock; the others that queued
//!   behind a connect that failed do not try again one after the other (that would add a connect
//!   timeout per waiting request), they fail over at once.
//! - **The request rewritten for HTTP/2.** The rewrite the proxy applies for every upstream
//!   (`forward`) leaves an HTTP/1.1 request in origin form with a `Host`. Toward an HTTP/2
//!   upstream, [`for_http2`] folds `Host` into the URI's authority (hyper sends it as
//!   `:authority`), sets the scheme, removes every connection-specific header (`Connection`,
//!   `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`: RFC 9113 8.2.2) and puts
//!   back `TE: trailers` when the client sent it ([`TeTrailers`]), which gRPC servers expect. A
//!   request that cannot reach an HTTP/2 canary and falls back to an HTTP/1.1 stable is turned
//!   back by [`for_http1`].
//! - **Responses need nothing here.** hyper's HTTP/1.1 server frames an HTTP/2 upstream's body
//!   with its `Content-Length`, else chunked, and writes trailers only to a client that sent
//!   `TE: trailers` (and only those the response announces in `Trailer`); an HTTP/2 client gets
//!   them as they came.

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Uri, Version};
use hyper::client::conn::http2::SendRequest;
use std::sync::Arc;

use super::upstream_tls::{TlsError, TlsOptions, UpstreamTls};
use super::ProxyBody;

/// The HTTP version spoken to an upstream's servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (the default), pooled keep-alive connections; over TLS when `tls`.
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`), one multiplexed connection per server.
    H2,
    /// HTTP/2 over plain TCP with prior knowledge, one multiplexed connection per server.
    H2c,
}

impl Protocol {
    /// True for `h2` and `h2c`.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::H2 | Protocol::H2c)
    }

    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::H2c => "h2c",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = TransportError;

    fn from_str(text: &str) -> Result<Self, TransportError> {
        match text {
            "http1" => Ok(Protocol::Http1),
            "h2" => Ok(Protocol::H2),
            "h2c" => Ok(Protocol::H2c),
            other => Err(TransportError::UnknownProtocol {
                protocol: other.to_string(),
            }),
        }
    }
}

/// A transport that cannot work. [`TransportError::field`] names the upstream's field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// A `protocol` other than `http1`, `h2`, `h2c`.
    #[error("unknown protocol `{protocol}` (known: http1, h2, h2c)")]
    UnknownProtocol { protocol: String },
    /// `h2` without TLS.
    #[error("`h2` is HTTP/2 over TLS, but the upstream has tls = false or http:// servers: use protocol = \"h2c\" for HTTP/2 over plain TCP")]
    H2NeedsTls,
    /// `h2c` with TLS.
    #[error("`h2c` is HTTP/2 over plain TCP, but the upstream uses TLS (https:// servers or tls = true): use protocol = \"h2\"")]
    H2cWithTls,
    /// A TLS setting that cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl TransportError {
    /// The upstream field the mistake is in (`protocol`, `ca`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            TransportError::UnknownProtocol { .. }
            | TransportError::H2NeedsTls
            | TransportError::H2cWithTls => "protocol",
            TransportError::Tls(e) => e.field(),
        }
    }
}

/// How graygate connects to the servers of one upstream: the protocol, and TLS when set.
/// Cheap to clone (the TLS side is shared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    protocol: Protocol,
    tls: Option<Arc<UpstreamTls>>,
}

impl Transport {
    /// `protocol`, over TLS with `tls` when given. `h2` needs TLS, `h2c` refuses it.
    pub fn new(protocol: Protocol, tls: Option<TlsOptions>) -> Result<Transport, TransportError> {
        match (protocol, &tls) {
            (Protocol::H2, None) => return Err(TransportError::H2NeedsTls),
            (Protocol::H2c, Some(_)) => return Err(TransportError::H2cWithTls),
            _ => {}
        }
        let tls = tls
            .map(|options| UpstreamTls::new(options, protocol == Protocol::H2))
            .transpose()?
            .map(Arc::new);
        Ok(Transport { protocol, tls })
    }

    /// The HTTP version spoken.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The TLS side, when the upstream uses TLS.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_deref()
    }
}

/// The shared HTTP/2 connection to one server (see the module documentation).
#[derive(Default)]
pub(super) struct H2Connection {
    /// The connection's sender; `None` before the first connect, and after one failed.
    sender: ArcSwapOption<SendRequest<ProxyBody>>,
    /// Held while a new connection is being made.
    pub(super) connecting: tokio::sync::Mutex<()>,
    /// Failed connects so far: a request that waited for the lock while this moved does not
    /// try again.
    pub(super) failures: AtomicU64,
}

impl H2Connection {
    /// A sender on the live connection, if there is one.
    pub(super) fn live(&self) -> Option<SendRequest<ProxyBody>> {
        let guard = self.sender.load();
        guard.as_deref().filter(|s| !s.is_closed()).cloned()
    }

    /// Makes `sender` the connection every request uses.
    pub(super) fn set(&self, sender: SendRequest<ProxyBody>) {
        self.sender.store(Some(Arc::new(sender)));
    }

    /// Counts a failed connect.
    pub(super) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Put on a request whose client accepts trailers (`TE: trailers`) before the rewrite removes
/// `TE` as hop-by-hop, so that an HTTP/2 upstream can be told again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeTrailers;

/// Marks `req` with [`TeTrailers`] when one of its `TE` headers lists `trailers`.
pub fn note_te_trailers<B>(req: &mut Request<B>) {
    let accepts = req
        .headers()
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    if accepts {
        req.extensions_mut().insert(TeTrailers);
    }
}

/// Headers that are about one HTTP/1 connection and malformed in HTTP/2 (RFC 9113 8.2.2).
const CONNECTION_SPECIFIC: [HeaderName; 5] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Shapes a rewritten request for an HTTP/2 upstream (see the module documentation). `server`
/// (`host:port`) is the authority when the request has no usable `Host`. Idempotent.
pub(super) fn for_http2<B>(req: &mut Request<B>, tls: bool, server: &str) {
    let headers = req.headers_mut();
    for name in &CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    let host = headers.remove(HOST);
    headers.remove(TE);
    if req.extensions().get::<TeTrailers>().is_some() {
        req.headers_mut()
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    let authority = host
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned())
        .or_else(|| Authority::try_from(server).ok());
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// Undoes [`for_http2`] for an HTTP/1.1 upstream (a fallback from an HTTP/2 canary): `Host`
/// from the authority, origin form, no `TE`. A request that was never shaped for HTTP/2 (the
/// usual case: one comparison) is left alone.
pub(super) fn for_http1<B>(req: &mut Request<B>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let headers: &mut HeaderMap = req.headers_mut();
    headers.remove(TE);
    if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.entry(HOST).or_insert(value);
    }
    let origin = req
        .uri()
        .path_and_query()
        .map_or(Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    *req.uri_mut() = origin;
    *req.version_mut() = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn protocols_parse_as_written() {
        for p in [Protocol::Http1, Protocol::H2, Protocol::H2c] {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        }
        assert_eq!(
            "http2".parse::<Protocol>().unwrap_err().to_string(),
            "unknown protocol `http2` (known: http1, h2, h2c)"
        );
        assert_eq!(Protocol::default(), Protocol::Http1);
    }

    #[test]
    fn h2_needs_tls_and_h2c_refuses_it() {
        let e = Transport::new(Protocol::H2, None).unwrap_err();
        assert_eq!(e, TransportError::H2NeedsTls);
        assert_eq!(e.field(), "protocol");
        assert!(Transport::new(Protocol::H2c, None).is_ok());
        assert!(Transport::new(Protocol::Http1, None).is_ok());
    }

    #[test]
    fn te_trailers_is_noted_in_any_form() {
        for te in ["trailers", "Trailers", "gzip, trailers", "trailers;q=1"] {
            let mut req = request("/", &[("te", te)]);
            note_te_trailers(&mut req);
            assert!(req.extensions().get::<TeTrailers>().is_some(), "{te}");
        }
        for te in ["gzip", "trailersx"] {
            let mut req = request("/", &[("te", te)]);
            note_te_trailers(&mut req);
            assert!(req.extensions().get::<TeTrailers>().is_none(), "{te}");
        }
    }

    #[test]
    fn toward_http2_host_becomes_the_authority_and_connection_headers_go() {
        let mut req = request(
            "/a/b?c=1",
            &[
                ("host", "shop.example:8443"),
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("te", "gzip"),
                ("x-kept", "yes"),
            ],
        );
        req.extensions_mut().insert(TeTrailers);
        for_http2(&mut req, true, "10.0.0.1:443");
        assert_eq!(req.uri(), "https://shop.example:8443/a/b?c=1");
        assert_eq!(req.version(), Version::HTTP_2);
        let h = req.headers();
        for gone in [
            "host",
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["te"], "trailers", "only trailers, and only when asked");
        assert_eq!(h["x-kept"], "yes");

        // Idempotent: a second HTTP/2 upstream sees the same request.
        let before = req.uri().clone();
        for_http2(&mut req, true, "10.0.0.2:443");
        assert_eq!(req.uri(), &before);
    }

    #[test]
    fn without_a_usable_host_the_server_is_the_authority() {
        let mut req = request("/", &[]);
        for_http2(&mut req, false, "127.0.0.1:9000");
        assert_eq!(req.uri(), "http://127.0.0.1:9000/");
        assert!(!req.headers().contains_key("te"), "not asked for");

        let mut junk = request("/x", &[("host", "bad host")]);
        for_http2(&mut junk, false, "[::1]:9000");
        assert_eq!(junk.uri(), "http://[::1]:9000/x");
    }

    #[test]
    fn a_fallback_to_http1_undoes_the_http2_shape() {
        let mut req = request("/p?q", &[("host", "shop.example")]);
        req.extensions_mut().insert(TeTrailers);
        for_http2(&mut req, false, "h:1");
        for_http1(&mut req);
        assert_eq!(req.uri(), "/p?q");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "shop.example");
        assert!(!req.headers().contains_key("te"));

        // An HTTP/1.1 request is left as it is.
        let mut plain = request("/p", &[("host", "a"), ("te", "trailers")]);
        *plain.version_mut() = Version::HTTP_11;
        for_http1(&mut plain);
        assert_eq!(plain.headers()["te"], "trailers");
    }
}
