//! `[tls] redirect_http = true`: the plain listeners answer every request with a redirect to
//! HTTPS instead of proxying it.
//!
//! The redirect is `308 Permanent Redirect` (the method and body are kept, unlike 301) to
//! `https://<host>[:<port>]<path>?<query>`:
//! - `<host>` is the host the client asked for (`Host`, or `:authority` over HTTP/2) without its
//!   port;
//! - `<port>` is the port of the first `[tls] listen` address as bound, left out when it is 443;
//! - the path and query are the request's, as sent.
//!
//! A request without a usable host gets `400` instead: there is nowhere to send it.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::proxy::ProxyBody;

/// Body of the 400 answered when there is no host to redirect to.
const NO_HOST: &str = "graygate: no Host to redirect to\n";

/// Where plain requests are sent when `redirect_http` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpsRedirect {
    /// The HTTPS port named in the location (none when it is 443).
    port: u16,
}

impl HttpsRedirect {
    /// Redirects to the TLS listener on `port`.
    pub fn to_port(port: u16) -> Self {
        HttpsRedirect { port }
    }

    /// The `Location` of a request's redirect; `None` when it names no usable host.
    pub fn location<B>(&self, req: &Request<B>) -> Option<String> {
        let host = match req.headers().get(HOST) {
            Some(h) => h.to_str().ok()?,
            None => req.uri().authority()?.as_str(),
        };
        let authority: Authority = host.parse().ok()?;
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = if self.port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{}{path}", self.port)
        };
        Some(location)
    }

    /// The answer to a request on a plain listener.
    pub fn answer<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let location = self
            .location(req)
            .and_then(|l| HeaderValue::from_str(&l).ok());
        let (status, body, location) = match location {
            Some(location) => (StatusCode::PERMANENT_REDIRECT, "", Some(location)),
            None => (StatusCode::BAD_REQUEST, NO_HOST, None),
        };
        let mut response = Response::new(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        if let Some(location) = location {
            response.headers_mut().insert(LOCATION, location);
        } else {
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_location_keeps_host_path_and_query() {
        let on_443 = HttpsRedirect::to_port(443);
        let on_8443 = HttpsRedirect::to_port(8443);
        let cases = [
            (
                on_443,
                "/a/b?c=1&d",
                Some("app.example:8080"),
                "https://app.example/a/b?c=1&d",
            ),
            (
                on_8443,
                "/a/b?c=1",
                Some("app.example:8080"),
                "https://app.example:8443/a/b?c=1",
            ),
            (
                on_8443,
                "/",
                Some("app.example"),
                "https://app.example:8443/",
            ),
            (on_443, "/v6", Some("[::1]:8080"), "https://[::1]/v6"),
            (
                on_443,
                "http://abs.example:80/p?q",
                None,
                "https://abs.example/p?q",
            ),
        ];
        for (redirect, uri, host, want) in cases {
            assert_eq!(
                redirect.location(&request(uri, host)).as_deref(),
                Some(want),
                "{uri} {host:?}"
            );
        }
    }

    #[test]
    fn no_usable_host_is_400() {
        let redirect = HttpsRedirect::to_port(443);
        for host in [None, Some(""), Some("bad host"), Some(":8080")] {
            let response = redirect.answer(&request("/", host));
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{host:?}");
        }
        let response = redirect.answer(&request("/x", Some("app.example")));
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()[LOCATION], "https://app.example/x");
    }
}
