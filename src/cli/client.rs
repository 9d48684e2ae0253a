//! A tiny HTTP/1.1 JSON client for the admin API, on the hyper client connection graygate already
//! uses: one connection per call, bounded in time, bearer token and `If-Match` when given.
//!
//! It only believes an answer that carries [`ADMIN_HEADER`]: anything else on the address (the
//! data plane, which passes an application's answers through, or another server) is
//! [`CtlError::NotAdmin`]. Before a change it asks `GET /healthz` on the same connection first,
//! so that a change is never sent to something that is not the admin API.

use super::{CtlError, Refusal};
use crate::api::{paths, AppliedBy, ErrorBody, IfMatch, Revision, ADMIN_HEADER};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
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
    /// Sent with every change as `?wait=`: how long the API waits for every instance.
    wait: Option<Duration>,
    /// Set when a change's wait ran out with instances lagging: what the API said.
    ran_out: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// A successful answer: read into its wire type, the JSON as the API sent it (what `--json`
/// prints), and the revision of its `ETag`.
#[derive(Debug)]
pub struct Answer<T> {
    pub body: T,
    pub raw: Value,
    pub revision: Option<Revision>,
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
            wait: None,
            ran_out: Default::default(),
        })
    }

    /// What the API said when a change's `--wait` ran out with instances lagging.
    pub fn ran_out(&self) -> Option<String> {
        self.ran_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every change waits until every live instance applied it, at most `wait`.
    pub fn with_wait(mut self, wait: Option<Duration>) -> Api {
        self.wait = wait;
        self
    }

    /// The address, as messages name it.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, CtlError> {
        self.call(Method::GET, path, IfMatch::Any, None).await
    }

    /// Sends one request; a 2xx answer comes back read as `T`, anything else is a [`CtlError`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        if_match: IfMatch,
        body: Option<Vec<u8>>,
    ) -> Result<Answer<T>, CtlError> {
        let what = format!("{method} {path}");
        let path = match self.wait.filter(|_| method != Method::GET) {
            Some(wait) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                let ms = wait.min(paths::MAX_WAIT).as_millis();
                format!("{path}{sep}{}={ms}ms", paths::WAIT_PARAM)
            }
            None => path.to_string(),
        };
        let path = path.as_str();
        let limit = CALL_TIMEOUT + self.wait.unwrap_or_default().min(paths::MAX_WAIT);
        let (status, revision, applied, bytes) =
            tokio::time::timeout(limit, self.exchange(method, path, if_match, body))
                .await
                .map_err(|_| {
                    CtlError::Unreachable(format!(
                        "{}: no answer within {CALL_TIMEOUT:?}",
                        self.url()
                    ))
                })??;
        let mut raw: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            return Err(refusal(status, raw));
        }
        // With `--wait` only, so that scripts reading a change's answer see what they saw before.
        if let Some(applied) = applied.as_ref().filter(|_| self.wait.is_some()) {
            // Said on stderr, so that stdout stays the answer; and in the JSON for `--json`.
            super::output::note(&applied.to_string());
            if applied.timed_out {
                *self.ran_out.lock().unwrap_or_else(|e| e.into_inner()) = Some(applied.to_string());
            }
            if let Value::Object(map) = &mut raw {
                map.insert(
                    "applied".into(),
                    serde_json::to_value(applied).unwrap_or_default(),
                );
            }
        }
        let body = serde_json::from_value(raw.clone()).map_err(|source| CtlError::Unexpected {
            addr: self.url(),
            what,
            source,
        })?;
        Ok(Answer {
            body,
            raw,
            revision,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        if_match: IfMatch,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Option<Revision>, Option<AppliedBy>, Bytes), CtlError> {
        let unreachable =
            |e: &dyn std::fmt::Display| CtlError::Unreachable(format!("{}: {e}", self.url()));
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

        if method != Method::GET {
            let probe = self.request(Method::GET, paths::HEALTHZ, IfMatch::Any, None)?;
            let resp = self.send(&mut sender, probe).await?;
            self.check_admin(&resp, &format!("GET {}", paths::HEALTHZ))?;
            resp.into_body()
                .collect()
                .await
                .map_err(|e| unreachable(&e))?;
        }
        let what = format!("{method} {path}");
        let req = self.request(method, path, if_match, body)?;
        let resp = self.send(&mut sender, req).await?;
        self.check_admin(&resp, &what)?;
        let status = resp.status();
        let revision = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Revision::parse_tag(v).ok());
        let applied = resp
            .headers()
            .get(paths::APPLIED_HEADER)
            .and_then(|v| serde_json::from_slice::<AppliedBy>(v.as_bytes()).ok());
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, revision, applied, bytes))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        if_match: IfMatch,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, CtlError> {
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
        if let Some(tag) = if_match.header_value() {
            req = req.header(header::IF_MATCH, tag);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        req.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CtlError::Usage(format!("cannot build the request: {e}")))
    }

    async fn send(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, CtlError> {
        let unreachable = |e: hyper::Error| CtlError::Unreachable(format!("{}: {e}", self.url()));
        sender.ready().await.map_err(unreachable)?;
        sender.send_request(req).await.map_err(unreachable)
    }

    /// An answer without [`ADMIN_HEADER`] did not come from a graygate admin API.
    fn check_admin(&self, resp: &Response<Incoming>, what: &str) -> Result<(), CtlError> {
        if resp.headers().contains_key(ADMIN_HEADER) {
            return Ok(());
        }
        Err(CtlError::NotAdmin {
            addr: self.url(),
            what: what.to_string(),
            status: resp.status(),
        })
    }
}

/// A refusal as the API wrote it; a 4xx is the caller's to fix, anything else the server's.
fn refusal(status: StatusCode, raw: Value) -> CtlError {
    let detail = serde_json::from_value::<ErrorBody>(raw.clone())
        .ok()
        .map(|b| b.error);
    let message = match (&detail, &raw) {
        (Some(d), _) => d.message.clone(),
        (None, Value::String(s)) if !s.trim().is_empty() => format!("{status}: {}", s.trim()),
        (None, _) => status.to_string(),
    };
    let refusal = Refusal {
        status,
        code: detail.as_ref().map(|d| d.code),
        field: detail.and_then(|d| d.field),
        message,
        raw,
    };
    if status.is_client_error() {
        CtlError::Refused(refusal)
    } else {
        CtlError::Server(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;

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
    fn refusals_read_the_error_body() {
        let raw = serde_json::json!({"error": {"code": "stale_revision",
            "message": "the policy is at revision 2, not 1: read it again and retry"}});
        let CtlError::Refused(r) = refusal(StatusCode::CONFLICT, raw) else {
            panic!("a 409 is a refusal")
        };
        assert_eq!(r.code, Some(ErrorCode::StaleRevision));
        assert_eq!(
            r.message,
            "the policy is at revision 2, not 1: read it again and retry"
        );
        let e = refusal(StatusCode::BAD_GATEWAY, Value::String("oops\n".into()));
        assert!(matches!(&e, CtlError::Server(r) if r.message == "502 Bad Gateway: oops"));
        assert_eq!(e.exit_code(), 3);
    }
}
