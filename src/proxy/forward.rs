//! Rewriting of requests on their way to the upstream and of responses on their way back.
//!
//! A proxy is two HTTP connections, not one: headers that describe a single connection
//! (hop-by-hop: `Connection`, `Keep-Alive`, `Transfer-Encoding`, ...) must not cross from one to
//! the other, or the client could steer how graygate talks to the upstream (and the other way).
//! The only exception is a WebSocket upgrade, whose `Connection: upgrade` and `Upgrade: websocket`
//! headers are exactly what the upstream must see. No other upgrade crosses: after an upstream's
//! `101` the connection becomes a tunnel that graygate no longer reads, so an `Upgrade: h2c`
//! passed on would let every later request on that connection reach the upstream unrouted and
//! unrewritten. Such a request loses its upgrade headers like any hop-by-hop header and is
//! proxied as a plain request, and the connection stays routed request by request.
//!
//! The upstream learns who the client is from `X-Forwarded-For` (the peer appended to the chain)
//! and `X-Real-IP` (the client IP graygate resolved, trusted proxies applied), and keeps the
//! `Host` the client asked for, so that virtual hosts upstream work as without graygate.

use bytes::Bytes;
use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, HOST,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, StatusCode, Uri, Version};

use super::client_ip::{normalize, X_FORWARDED_FOR, X_REAL_IP};
use crate::policy::push_ip;

/// Name of the request header that tells the upstream which version graygate chose, when the
/// version header is switched on in the config.
pub const DEFAULT_VERSION_HEADER: HeaderName = HeaderName::from_static("x-graygate-version");

/// Headers that describe one connection and never cross the proxy (RFC 9110 7.6.1, plus the
/// non-standard `Keep-Alive` and `Proxy-Connection` that old clients still send, and h2c's
/// `HTTP2-Settings`, which belongs to an upgrade graygate never forwards).
const HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// The one protocol graygate tunnels.
const WEBSOCKET: &str = "websocket";

/// True when the request asks for a WebSocket (`Connection: upgrade` and `websocket` among the
/// `Upgrade` protocols). Such a request keeps `Upgrade: websocket`, and a 101 answer turns the
/// two connections into a tunnel. Any other upgrade (`h2c`) is not one: see the module
/// documentation.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && upgrade_protocols(headers).any(|p| p.eq_ignore_ascii_case(WEBSOCKET))
}

/// True when an upstream's `101` switches to WebSocket: the only switch the client can be
/// let through to (anything else is answered 502).
pub fn is_websocket_switch(headers: &HeaderMap) -> bool {
    upgrade_protocols(headers).any(|p| p.eq_ignore_ascii_case(WEBSOCKET))
}

/// A request body of unknown length (the client sent it chunked) goes on chunked, said
/// explicitly: without it hyper's client sends a `GET`'s or `HEAD`'s body as empty, the body is
/// never read, and the request the client pipelined behind it is lost with the connection.
pub fn send_chunked(headers: &mut HeaderMap) {
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    headers.remove(CONTENT_LENGTH);
}

/// Phase "rewrite" of a request, before it goes upstream:
/// - hop-by-hop headers removed (`Connection: upgrade` and `Upgrade: websocket` kept when
///   `upgrade`, a WebSocket upgrade);
/// - `X-Forwarded-For`: the peer address appended to what the client sent (`existing, peer`);
/// - `X-Real-IP`: the resolved client IP (any value the client sent is replaced);
/// - the URI in origin-form (`/path?query`), as an origin server expects it;
/// - `Host` kept as the edge left it (for an absolute-form target, the edge has made its
///   authority the `Host` already); taken from the URI authority if there is still none;
/// - HTTP/1.1 towards the upstream, whatever the client spoke, so that the upstream connection
///   can be kept alive and pooled; an HTTP/2 client's cookie fields joined into one line;
pub fn rewrite_request<B>(req: &mut Request<B>, peer: IpAddr, client_ip: IpAddr, upgrade: bool) {
    strip_hop_by_hop(req.headers_mut(), upgrade);

    if req.uri().authority().is_some() || req.uri().scheme().is_some() {
        if !req.headers().contains_key(HOST) {
            if let Some(host) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(HOST, host);
            }
        }
        let origin_form = match req.uri().path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        *req.uri_mut() = origin_form;
    }
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    append_forwarded_for(headers, peer);
    let mut real_ip = String::with_capacity(15);
    push_ip(&mut real_ip, client_ip);
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(real_ip)) {
        headers.insert(X_REAL_IP, value);
    }
}

/// An HTTP/2 client may send its cookies as several `cookie` fields, one per pair (RFC 9113
/// 8.2.3, for header compression); an HTTP/1.1 server expects one `Cookie` line (RFC 6265 5.4),
/// and many read only the first. They are joined with `; `, in order, before the request goes
/// upstream (an HTTP/2 upstream takes the joined line as well).
fn join_cookies(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for line in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(line.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// Sets the version header (`name: version`), replacing whatever the client sent under that
/// name so that a client cannot tell the upstream it is on another version. Called again with
/// the stable version when a request falls back. A version name that is not a valid header
/// value (it comes from the policy, so this should not happen) removes the header instead.
pub fn set_version_header(headers: &mut HeaderMap, name: &HeaderName, version: &str) {
    match HeaderValue::from_str(version) {
        Ok(value) => {
            headers.insert(name.clone(), value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Phase "respond": hop-by-hop headers removed from the upstream's response, except the
/// upgrade headers of a `101 Switching Protocols`, which the client needs to finish its
/// handshake.
pub fn rewrite_response<B>(resp: &mut Response<B>) {
    let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), upgrade);
}

/// Removes the hop-by-hop headers and every header named in `Connection`. With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade: websocket` are put back (and nothing else from
/// `Connection` or `Upgrade`).
///
/// On the request path twice per request (request and response): one pass over the names finds
/// which hop-by-hop headers are there (nearly always none, or `Connection` alone), and only
/// those are looked up to be removed; a name in `Connection` is looked up without being
/// parsed into an owned name unless a header by that name is there.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        remove_connection_options(headers);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static(WEBSOCKET));
    }
}

/// Where `name` is in [`HOP_BY_HOP`]: a `match` on the text (its length first), cheaper per
/// header than comparing it with each of the ten names.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    hop_by_hop_bytes(name.as_bytes())
}

/// [`hop_by_hop_index`] of a name's bytes, in lower case.
fn hop_by_hop_bytes(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"connection" => 0,
        b"http2-settings" => 1,
        b"keep-alive" => 2,
        b"proxy-authenticate" => 3,
        b"proxy-authorization" => 4,
        b"proxy-connection" => 5,
        b"te" => 6,
        b"trailer" => 7,
        b"transfer-encoding" => 8,
        b"upgrade" => 9,
        _ => return None,
    })
}

/// [`hop_by_hop_index`] of a `Connection` token, in whatever case it was sent.
fn hop_by_hop_token(token: &str) -> Option<usize> {
    // The longest hop-by-hop name, `proxy-authorization`, is 19 bytes.
    let mut lower = [0u8; 19];
    let lower = lower.get_mut(..token.len())?;
    for (l, b) in lower.iter_mut().zip(token.as_bytes()) {
        *l = b.to_ascii_lowercase();
    }
    hop_by_hop_bytes(lower)
}

/// Removes every header named in `Connection` (RFC 9110 7.6.1), but never `Host` (without it
/// the upstream cannot serve the request; `Connection` itself goes with the hop-by-hop ones).
/// Each round removes one header that is there, so it ends. A token that names a hop-by-hop
/// header (`keep-alive`, nearly every response's only one) is not looked up: the caller removes
/// those whenever they are there.
fn remove_connection_options(headers: &mut HeaderMap) {
    loop {
        let named = connection_tokens(headers)
            .filter(|t| hop_by_hop_token(t).is_none() && !t.eq_ignore_ascii_case("host"))
            .find(|t| headers.contains_key(*t))
            .and_then(|t| HeaderName::from_bytes(t.as_bytes()).ok());
        match named {
            Some(name) => {
                headers.remove(name);
            }
            None => return,
        }
    }
}

/// The comma-separated protocols of every `Upgrade` header line.
fn upgrade_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The comma-separated tokens of every `Connection` header line.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `X-Forwarded-For: <every line the client sent, joined>, <peer>` in one header line.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    // Sized for a chain of a few addresses, and handed to the header value without a copy.
    let mut chain = String::with_capacity(64);
    for line in headers.get_all(X_FORWARDED_FOR) {
        let Ok(line) = line.to_str() else { continue };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        chain.push_str(line);
        chain.push_str(", ");
    }
    push_ip(&mut chain, normalize(peer));
    let value = HeaderValue::from_maybe_shared(Bytes::from(chain))
        .or_else(|_| HeaderValue::from_str(&normalize(peer).to_string()));
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&'static str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_hop_by_hop_index_is_the_table_s_order() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("host"), None);
        assert_eq!(hop_by_hop_index("x-real-ip"), None);
    }

    #[test]
    fn a_connection_token_names_a_hop_by_hop_header_in_any_case() {
        assert_eq!(hop_by_hop_token("Keep-Alive"), Some(2));
        assert_eq!(hop_by_hop_token("PROXY-AUTHORIZATION"), Some(4));
        assert_eq!(hop_by_hop_token("upgrade"), Some(9));
        assert_eq!(hop_by_hop_token("close"), None);
        assert_eq!(hop_by_hop_token("x-proxy-authorization"), None);
        assert_eq!(hop_by_hop_token(""), None);
    }

    const PEER: &str = "192.0.2.10";
    const CLIENT: &str = "198.51.100.7";

    fn rewrite(req: &mut Request<()>, upgrade: bool) {
        rewrite_request(req, PEER.parse().unwrap(), CLIENT.parse().unwrap(), upgrade);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut req = request(
            "/a",
            &[
                ("host", "example.com"),
                ("connection", "keep-alive, x-secret, host"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("proxy-authorization", "Basic abc"),
                ("te", "trailers"),
                ("trailer", "x-sum"),
                ("upgrade", "h2c"),
                ("x-kept", "yes"),
            ],
        );
        assert!(!is_websocket_upgrade(req.headers()));
        rewrite(&mut req, false);
        let h = req.headers();
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["host"], "example.com", "Host is never removed");
    }

    #[test]
    fn websocket_upgrade_keeps_its_upgrade_headers() {
        let mut req = request(
            "/ws",
            &[
                ("host", "example.com"),
                ("connection", "Upgrade, x-secret"),
                ("x-secret", "1"),
                ("upgrade", "WebSocket, x-other/1"),
            ],
        );
        assert!(is_websocket_upgrade(req.headers()));
        rewrite(&mut req, true);
        let h = req.headers();
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(
            h["upgrade"], "websocket",
            "only the WebSocket protocol is offered"
        );
        assert!(!h.contains_key("x-secret"));
    }

    /// Request headers, whether they ask for a WebSocket, and what the case shows.
    type UpgradeCase<'a> = (&'a [(&'static str, &'a str)], bool, &'a str);

    #[test]
    fn only_websocket_is_an_upgrade() {
        let cases: &[UpgradeCase] = &[
            (
                &[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
                ],
                false,
                "h2c",
            ),
            (
                &[("connection", "upgrade"), ("upgrade", "TLS/1.2")],
                false,
                "TLS",
            ),
            (&[("upgrade", "websocket")], false, "no Connection: upgrade"),
            (
                &[
                    ("connection", "keep-alive, Upgrade"),
                    ("upgrade", "websocket"),
                ],
                true,
                "websocket",
            ),
        ];
        for (headers, websocket, what) in cases {
            let mut req = request("/", headers);
            assert_eq!(is_websocket_upgrade(req.headers()), *websocket, "{what}");
            rewrite(&mut req, *websocket);
            if !websocket {
                // Proxied as a plain request: nothing of the upgrade is left.
                for gone in ["connection", "upgrade", "http2-settings"] {
                    assert!(!req.headers().contains_key(gone), "{what}: {gone} left");
                }
            }
        }
        let switch = |upgrade: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(UPGRADE, HeaderValue::from_static(upgrade));
            is_websocket_switch(&h)
        };
        assert!(switch("websocket"));
        assert!(!switch("h2c"));
    }

    #[test]
    fn an_unsized_body_is_sent_chunked() {
        let mut req = request("/", &[("content-length", "5")]);
        send_chunked(req.headers_mut());
        assert_eq!(req.headers()["transfer-encoding"], "chunked");
        assert!(!req.headers().contains_key("content-length"));
    }

    #[test]
    fn forwarded_for_is_appended_and_real_ip_replaced() {
        let mut req = request(
            "/",
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-real-ip", "6.6.6.6"),
            ],
        );
        rewrite(&mut req, false);
        assert_eq!(
            req.headers()["x-forwarded-for"],
            "1.1.1.1, 2.2.2.2, 192.0.2.10"
        );
        assert_eq!(req.headers()["x-real-ip"], CLIENT);

        let mut fresh = request("/", &[]);
        rewrite(&mut fresh, false);
        assert_eq!(fresh.headers()["x-forwarded-for"], PEER);
    }

    #[test]
    fn absolute_uri_becomes_origin_form_and_gives_the_host() {
        let mut req = request("http://svc.example:8080/p/q?x=1", &[]);
        rewrite(&mut req, false);
        assert_eq!(req.uri(), "/p/q?x=1");
        assert_eq!(req.headers()["host"], "svc.example:8080");

        let mut with_host = request("http://other/p", &[("host", "kept.example")]);
        rewrite(&mut with_host, false);
        assert_eq!(with_host.uri(), "/p");
        assert_eq!(with_host.headers()["host"], "kept.example");
    }

    #[test]
    fn version_header_replaces_a_client_value() {
        let mut req = request("/", &[("x-graygate-version", "canary-by-client")]);
        set_version_header(req.headers_mut(), &DEFAULT_VERSION_HEADER, "v2");
        assert_eq!(req.headers()["x-graygate-version"], "v2");
    }

    #[test]
    fn response_hop_by_hop_removed_except_for_101() {
        let mut resp = Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        rewrite_response(&mut resp);
        assert!(!resp.headers().contains_key("x-hop"));
        assert!(!resp.headers().contains_key("keep-alive"));
        assert!(!resp.headers().contains_key("transfer-encoding"));
        assert_eq!(resp.headers()["x-kept"], "yes");

        let mut switching = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        rewrite_response(&mut switching);
        assert_eq!(switching.headers()["connection"], "upgrade");
        assert_eq!(switching.headers()["upgrade"], "websocket");
    }
}
