//! What a web browser can be made to send to the admin API, refused: the admin API must be safe to
//! have open in a browser, with or without tokens.
//!
//! - **Cross-site request forgery.** A page of another site can make a browser send a form
//!   (`application/x-www-form-urlencoded`, `multipart/form-data`) or a `text/plain` POST without
//!   asking anyone, with the browser's cookies. So a change (any method but GET, HEAD, OPTIONS) is
//!   taken only as JSON, or with no body and no content type (what `graygate ctl` sends for
//!   promote and rollback): a JSON request from another site needs a CORS preflight, which this
//!   API never grants. And a change whose `Origin` (or `Sec-Fetch-Site`) says it comes from
//!   another site is refused whatever it carries.
//! - **DNS rebinding.** Without tokens the API answers only clients on this machine, but a page
//!   of `evil.example` whose name is made to resolve to 127.0.0.1 reaches it from the browser on
//!   this machine. Such a request carries `Host: evil.example`: without tokens, only a loopback
//!   `Host` (`localhost`, `127.0.0.0/8`, `[::1]`, with any port) is answered (a request with no
//!   `Host` comes from no browser).

use super::error::ApiError;
use crate::api::ErrorCode;
use http::{header, HeaderMap, Method};
use std::net::IpAddr;

/// Checks one request before anything else looks at it. `open`: no tokens are configured.
pub fn check(method: &Method, headers: &HeaderMap, open: bool) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // A browser always sends `Host`; a request without one comes from no browser.
    if open && !host.is_empty() && !is_loopback_host(host) {
        return Err(ApiError::forbidden(format!(
            "Host `{host}` is not this machine: with no admin tokens configured, the admin API answers only requests to localhost, 127.0.0.1 or [::1] (a page of another site whose name resolves here must not reach it)"
        )));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !same_origin(origin, host) {
            return Err(ApiError::forbidden(format!(
                "a change from another site is refused: Origin `{origin}` is not this admin API (Host `{host}`)"
            )));
        }
    }
    let site = headers
        .get("sec-fetch-site")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
        return Err(ApiError::forbidden(format!(
            "a change from another site is refused (Sec-Fetch-Site: {site})"
        )));
    }
    match headers.get(header::CONTENT_TYPE) {
        Some(kind) => {
            let kind = kind.to_str().unwrap_or("");
            if !is_json(kind) {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("a change is sent as JSON (Content-Type: application/json), not as `{kind}`"),
                ));
            }
        }
        None if has_body(headers) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "a change with a body is sent as JSON: Content-Type: application/json is missing",
            ));
        }
        None => {}
    }
    Ok(())
}

/// `application/json` or `application/<something>+json`, parameters allowed.
fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n.trim() != "0")
}

/// Whether `Origin` (`scheme://host[:port]`) names the same host and port as `Host`. `null`
/// (a sandboxed page, a file) is no origin of this API.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        if split_port(&a).1.is_some() {
            a
        } else {
            format!("{a}:{default_port}")
        }
    };
    !host.is_empty() && with_port(authority) == with_port(host)
}

/// `host[:port]` into the host and the port, `[v6]:port` included.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, tail)) => (v6, tail.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// `localhost`, an address in 127.0.0.0/8, or `::1`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let (name, _) = split_port(host);
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn code(r: Result<(), ApiError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn without_tokens_only_a_loopback_host_is_answered() {
        for host in [
            "localhost",
            "localhost:9901",
            "127.0.0.1:9901",
            "127.1.2.3",
            "[::1]:9901",
            "LOCALHOST.",
        ] {
            assert!(
                check(&Method::GET, &headers(&[("host", host)]), true).is_ok(),
                "{host}"
            );
        }
        for host in [
            "evil.example",
            "evil.example:9901",
            "10.0.0.7:9901",
            "[2001:db8::1]:9901",
        ] {
            let e = check(&Method::GET, &headers(&[("host", host)]), true).unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{host}");
            assert!(
                e.message().contains("is not this machine"),
                "{}",
                e.message()
            );
        }
        // With tokens, the token decides; any Host.
        assert!(check(&Method::GET, &headers(&[("host", "gg.example")]), false).is_ok());
    }

    #[test]
    fn a_change_from_another_site_is_refused() {
        let local = ("host", "127.0.0.1:9901");
        let json = ("content-type", "application/json");
        let e = check(
            &Method::POST,
            &headers(&[local, json, ("origin", "http://evil.example")]),
            true,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(
            e.message(),
            "a change from another site is refused: Origin `http://evil.example` is not this admin API (Host `127.0.0.1:9901`)"
        );
        for origin in [
            "null",
            "http://127.0.0.1:9902",
            "https://127.0.0.1",
            "file://x",
        ] {
            assert_eq!(
                code(check(
                    &Method::PUT,
                    &headers(&[local, json, ("origin", origin)]),
                    true
                )),
                Some(ErrorCode::Forbidden),
                "{origin}"
            );
        }
        // The same origin, a browser that says so, and no origin at all (ctl, curl) pass.
        assert!(check(
            &Method::POST,
            &headers(&[local, json, ("origin", "http://127.0.0.1:9901")]),
            true
        )
        .is_ok());
        assert!(check(
            &Method::POST,
            &headers(&[
                ("host", "localhost"),
                json,
                ("origin", "http://LOCALHOST:80")
            ]),
            true
        )
        .is_ok());
        assert!(check(
            &Method::POST,
            &headers(&[local, json, ("sec-fetch-site", "same-origin")]),
            true
        )
        .is_ok());
        assert!(check(&Method::POST, &headers(&[local, json]), true).is_ok());
        assert_eq!(
            code(check(
                &Method::POST,
                &headers(&[local, json, ("sec-fetch-site", "cross-site")]),
                true
            )),
            Some(ErrorCode::Forbidden)
        );
        // Reads are not changes.
        assert!(check(
            &Method::GET,
            &headers(&[local, ("origin", "http://evil.example")]),
            true
        )
        .is_ok());
    }

    #[test]
    fn a_change_is_json_or_has_no_body() {
        let local = ("host", "127.0.0.1:9901");
        for kind in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/json",
        ] {
            let e = check(
                &Method::POST,
                &headers(&[local, ("content-type", kind)]),
                false,
            )
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::UnsupportedMediaType, "{kind}");
            assert_eq!(e.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        for kind in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(
                check(
                    &Method::POST,
                    &headers(&[local, ("content-type", kind)]),
                    false
                )
                .is_ok(),
                "{kind}"
            );
        }
        // No type: only without a body (promote, rollback as ctl sends them).
        assert!(check(&Method::POST, &headers(&[local]), false).is_ok());
        assert!(check(
            &Method::POST,
            &headers(&[local, ("content-length", "0")]),
            false
        )
        .is_ok());
        assert_eq!(
            code(check(
                &Method::POST,
                &headers(&[local, ("content-length", "12")]),
                false
            )),
            Some(ErrorCode::UnsupportedMediaType)
        );
        assert_eq!(
            code(check(
                &Method::DELETE,
                &headers(&[local, ("transfer-encoding", "chunked")]),
                false
            )),
            Some(ErrorCode::UnsupportedMediaType)
        );
    }
}
