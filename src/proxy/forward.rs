//! Rewriting of requests on their way to the upstream and of responses on their way back.
//!
//! A proxy is two HTTP connections, not one: headers that describe a single connection
//! (hop-by-hop: `Connection`, `Keep-Alive`, `Transfer-Encoding`, ...) must not cross from one to
//! the other, or the client could steer how graygate talks to the upstream (and the other way).
//! The only exception is a protocol upgrade (WebSocket), whose `Connection: upgrade` and
//! `Upgrade` headers are exactly what the upstream must see.
//!
//! The upstream learns who the client is from `X-Forwarded-For` (the peer appended to the chain)
//! and `X-Real-IP` (the client IP graygate resolved, trusted proxies applied), and keeps the
//! `Host` the client asked for, so that virtual hosts upstream work as without graygate.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, StatusCode, Uri, Version};

use super::client_ip::{normalize, X_FORWARDED_FOR, X_REAL_IP};

/// Name of the request header that tells the upstream which version graygate chose, when the
/// version header is switched on in the config.
pub const DEFAULT_VERSION_HEADER: HeaderName = HeaderName::from_static("x-graygate-version");

/// Headers that describe one connection and never cross the proxy (RFC 9110 7.6.1, plus the
/// non-standard `Keep-Alive` and `Proxy-Connection` that old clients still send).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// True when the request asks to switch protocols (`Connection: upgrade` and an `Upgrade`
/// header, as a WebSocket handshake does). Such a request keeps its upgrade headers, and a 101
/// answer turns the two connections into a tunnel.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Phase "rewrite" of a request, before it goes upstream:
/// - hop-by-hop headers removed (upgrade headers kept when `upgrade`);
/// - `X-Forwarded-For`: the peer address appended to what the client sent (`existing, peer`);
/// - `X-Real-IP`: the resolved client IP (any value the client sent is replaced);
/// - the URI in origin-form (`/path?query`), as an origin server expects it;
/// - `Host` kept as sent; taken from the URI authority if the client sent an absolute URI and
///   no `Host`;
/// - HTTP/1.1 towards the upstream, whatever the client spoke, so that the upstream connection
///   can be kept alive and pooled.
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
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    append_forwarded_for(headers, peer);
    if let Ok(value) = HeaderValue::from_str(&client_ip.to_string()) {
        headers.insert(X_REAL_IP, value);
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
/// `Connection: upgrade` and `Upgrade` are put back (and nothing else from `Connection`).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = if keep_upgrade {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    // `Host` is never dropped this way: without it the upstream cannot serve the request.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| *n != HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, upgrade);
    }
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
    let mut chain = String::new();
    for line in headers.get_all(X_FORWARDED_FOR) {
        let Ok(line) = line.to_str() else { continue };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        chain.push_str(line);
        chain.push_str(", ");
    }
    let _ = write!(chain, "{}", normalize(peer));
    let value = HeaderValue::from_str(&chain)
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
        assert!(!is_upgrade_request(req.headers()));
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
    fn upgrade_request_keeps_its_upgrade_headers() {
        let mut req = request(
            "/ws",
            &[
                ("host", "example.com"),
                ("connection", "Upgrade, x-secret"),
                ("x-secret", "1"),
                ("upgrade", "websocket"),
            ],
        );
        assert!(is_upgrade_request(req.headers()));
        rewrite(&mut req, true);
        let h = req.headers();
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("x-secret"));
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
