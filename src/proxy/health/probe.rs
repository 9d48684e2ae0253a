//! One active health check, and one round of them over an upstream's servers.
//!
//! A check is a plain `GET` on a new connection, never a pooled one: it must find out whether a
//! connection can be made at all, as a request that finds no idle connection would. It sends
//! `Connection: close`, is bounded as a whole (connect, request, response headers) by the
//! timeout, and passes when the status is one of the configured ones; the body is not read. All
//! servers of an upstream are checked at once, so that a round takes one timeout at most.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{now_ms, HealthCheck, UpstreamHealth};

/// The `User-Agent` of a check, so that a server's access log tells checks from traffic.
const CHECK_USER_AGENT: &str = "graygate-health-check";

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP/1 handshake over the new connection failed.
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request could not be built (a configured host or path that slipped past the checks).
    #[error("the check cannot be sent: {0}")]
    Invalid(#[source] http::Error),
    /// The exchange failed: the connection closed or reset before the response headers.
    #[error("request failed: {0}")]
    Request(#[source] hyper::Error),
    /// The connection ended before any answer.
    #[error("the connection closed before an answer")]
    Closed,
    /// An answer with a status that is not one of the configured ones.
    #[error("answered {0}")]
    Status(u16),
    /// No response headers within the timeout.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// One check of the server at `addr`.
pub(super) async fn check(addr: &str, check: &HealthCheck) -> Result<(), ProbeError> {
    match tokio::time::timeout(check.timeout, exchange(addr, check)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ProbeError::Timeout(check.timeout)),
    }
}

/// The check's exchange, unbounded (the caller bounds it). The connection is driven here, not
/// on a task of its own, so that everything about it ends with the check.
async fn exchange(addr: &str, check: &HealthCheck) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Handshake)?;
    let request = Request::get(check.path.as_str())
        .header(HOST, check.host.as_deref().unwrap_or(addr))
        .header(USER_AGENT, CHECK_USER_AGENT)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::Invalid)?;
    let sent = sender.send_request(request);
    tokio::pin!(conn, sent);
    let response = tokio::select! {
        biased;
        response = &mut sent => response,
        ended = &mut conn => match ended {
            Err(e) => return Err(ProbeError::Request(e)),
            // Closed as asked (`Connection: close`), maybe with the answer already handed over.
            Ok(()) => sent.await,
        },
    };
    let response = response.map_err(|e| {
        if e.is_canceled() {
            ProbeError::Closed
        } else {
            ProbeError::Request(e)
        }
    })?;
    let status = response.status().as_u16();
    if check.statuses.contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// One round: every server with a weight checked at once, then the results recorded and the
/// upstream's state updated.
pub(super) async fn round(health: &UpstreamHealth, settings: &HealthCheck) {
    let checks = health.weighted().map(|server| async move {
        let result = check(&server.addr, settings).await;
        (server, result)
    });
    let results = futures_util::future::join_all(checks).await;
    let now = now_ms();
    for (server, result) in results {
        health.checked(server, result, now);
    }
    health.update(now);
}

#[cfg(test)]
mod tests {
    //! Checks against real sockets on 127.0.0.1 port 0: a server that answers by path, one that
    //! accepts and never answers, and a port where nothing listens.

    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    /// Answers 200 to `/healthz` sent as a check (its `User-Agent`, `Host` the server's
    /// address) and to `/host` with `Host: app.internal`; 503 to anything else.
    async fn server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let header = |name| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let (host, agent) = (header(HOST), header(USER_AGENT));
                        let ok = match req.uri().path() {
                            "/healthz" => host == addr.to_string() && agent == CHECK_USER_AGENT,
                            "/host" => host == "app.internal",
                            _ => false,
                        };
                        async move {
                            let mut response = http::Response::new(Full::new(Bytes::new()));
                            if !ok {
                                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, task)
    }

    fn settings(path: &str) -> HealthCheck {
        HealthCheck {
            path: path.into(),
            timeout: Duration::from_millis(300),
            ..HealthCheck::default()
        }
    }

    #[tokio::test]
    async fn a_check_passes_on_a_configured_status_only() {
        let (addr, task) = server().await;
        let addr = addr.to_string();
        assert_eq!(
            check(&addr, &settings("/healthz"))
                .await
                .map_err(|e| e.to_string()),
            Ok(())
        );
        let failed = check(&addr, &settings("/other")).await.unwrap_err();
        assert_eq!(failed.to_string(), "answered 503");
        let accepting_503 = HealthCheck {
            statuses: vec![503],
            ..settings("/other")
        };
        assert!(check(&addr, &accepting_503).await.is_ok());
        let with_host = HealthCheck {
            host: Some("app.internal".into()),
            ..settings("/host")
        };
        assert!(check(&addr, &with_host).await.is_ok());
        assert!(check(&addr, &settings("/host")).await.is_err());
        task.abort();
    }

    #[tokio::test]
    async fn a_check_fails_on_a_closed_port_and_on_a_server_that_never_answers() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let refused = check(&closed, &settings("/healthz")).await.unwrap_err();
        assert!(
            refused.to_string().starts_with("connect failed: "),
            "{refused}"
        );

        // Accepts, reads, never answers: the timeout bounds the check.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                open.push(stream);
            }
        });
        let started = std::time::Instant::now();
        let timed_out = check(&addr, &settings("/healthz")).await.unwrap_err();
        assert_eq!(timed_out.to_string(), "no answer within 300ms");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }
}
