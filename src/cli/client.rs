//! A tiny HTTP/1.1 JSON client for the admin API, on the hyper client connection graygate already
//! uses: one connection per call, bounded in time, bearer token and `If-Match` when given.

use super::CtlError;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::Duration;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one call may take as a whole.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Api {
    /// `host:port`.
    authority: String,
    token: Option<String>,
}

impl Api {
    /// `url` is `http://host:port` (a trailing `/` is fine) or just `host:port`.
    pub fn new(url: &str, token: Option<String>) -> Result<Api, CtlError> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(CtlError::Usage(format!(
                "{url}: the admin API speaks plain HTTP (keep it on loopback, or reach it through an SSH tunnel or a TLS proxy)"
            )));
        } else if url.contains("://") {
            return Err(CtlError::Usage(format!("{url}: not an http:// address")));
        } else {
            url
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(CtlError::Usage(format!(
                "{url}: not an admin address like http://127.0.0.1:9901"
            )));
        }
        Ok(Api {
            authority: authority.to_string(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// Sends one request; a 2xx answer's JSON comes back, anything else is a [`CtlError`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        if_match: Option<u64>,
        body: Option<Vec<u8>>,
    ) -> Result<Value, CtlError> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, if_match, body))
            .await
            .map_err(|_| {
                CtlError::Unreachable(format!(
                    "http://{}: no answer within {CALL_TIMEOUT:?}",
                    self.authority
                ))
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        if_match: Option<u64>,
        body: Option<Vec<u8>>,
    ) -> Result<Value, CtlError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            CtlError::Unreachable(format!("http://{}: {e}", self.authority))
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| unreachable(&format_args!("cannot connect within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(&format_args!("cannot connect: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);

        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("graygate-ctl/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(revision) = if_match {
            req = req.header(header::IF_MATCH, format!("\"{revision}\""));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CtlError::Usage(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| match &value {
                Value::String(s) if !s.trim().is_empty() => format!("{status}: {}", s.trim()),
                _ => status.to_string(),
            });
        if status.is_client_error() {
            Err(CtlError::Refused {
                status,
                message,
                body: value,
            })
        } else {
            Err(CtlError::Server {
                status,
                message,
                body: value,
            })
        }
    }
}

/// `segment` percent-encoded for a URL path (everything but unreserved characters).
pub fn segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Api::new("http://127.0.0.1:9901/", None).unwrap().authority,
            "127.0.0.1:9901"
        );
        assert_eq!(
            Api::new("localhost:9901", None).unwrap().authority,
            "localhost:9901"
        );
        assert!(matches!(
            Api::new("https://x:1", None),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            Api::new("http://x", None),
            Err(CtlError::Usage(_))
        ));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("web"), "web");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
