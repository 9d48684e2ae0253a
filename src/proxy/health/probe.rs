//! One active health check, and one round of them over an upstream's servers.
//!
//! A check is a plain `GET` on a new connection, never a pooled one: it must find out whether a
//! connection can be made at all, as a request that finds no idle connection would. It speaks
//! the upstream's transport: TLS verified as requests are (a failed handshake fails the check),
//! HTTP/1.1 with `Connection: close`, or HTTP/2 (`h2`, `h2c`). It is bounded as a whole (connect, request, response headers) by the
//! timeout, and passes when the status is one of the configured ones; the body is not read. All
//! servers of an upstream are checked at once, so that a round takes one timeout at most.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::super::upstream_protocol::Transport;
use super::super::upstream_tls::UpstreamIo;
use super::{now_ms, HealthCheck, UpstreamHealth};

/// The `User-Agent` of a check, so that a server's access log tells checks from traffic.
const CHECK_USER_AGENT: &str = "graygate-health-check";

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed (certificate not trusted or not for the name, no HTTP/2).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
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

/// One check of the server at `addr`, spoken over `transport`.
pub(super) async fn check(
    addr: &str,
    check: &HealthCheck,
    transport: &Transport,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(check.timeout, exchange(addr, check, transport)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ProbeError::Timeout(check.timeout)),
    }
}

/// The check's exchange, unbounded (the caller bounds it). The connection is driven here, not
/// on a task of its own, so that everything about it ends with the check.
async fn exchange(
    addr: &str,
    check: &HealthCheck,
    transport: &Transport,
) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let io = match transport.tls() {
        None => UpstreamIo::Plain(stream),
        Some(tls) => {
            let name = tls
                .server_name(addr)
                .map_err(|e| ProbeError::Tls(std::io::Error::other(e)))?;
            let stream = tls.handshake(name, stream).await.map_err(ProbeError::Tls)?;
            UpstreamIo::Tls(Box::new(stream))
        }
    };
    let host = check.host.as_deref().unwrap_or(addr);
    let response = if transport.protocol().is_http2() {
        let scheme = if transport.tls().is_some() {
            "https"
        } else {
            "http"
        };
        let request = Request::get(format!("{scheme}://{host}{}", check.path))
            .header(USER_AGENT, CHECK_USER_AGENT)
            .body(Empty::<Bytes>::new())
            .map_err(ProbeError::Invalid)?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(ProbeError::Handshake)?;
        let sent = sender.send_request(request);
        drive(conn, sent).await
    } else {
        let request = Request::get(check.path.as_str())
            .header(HOST, host)
            .header(USER_AGENT, CHECK_USER_AGENT)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(ProbeError::Invalid)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(ProbeError::Handshake)?;
        let sent = sender.send_request(request);
        drive(conn, sent).await
    };
    let status = response?.status().as_u16();
    if check.statuses.contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// Drives the connection `conn` until the response headers of `sent` are in.
async fn drive(
    conn: impl std::future::Future<Output = hyper::Result<()>>,
    sent: impl std::future::Future<Output = hyper::Result<Response<Incoming>>>,
) -> Result<Response<Incoming>, ProbeError> {
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
    response.map_err(|e| {
        if e.is_canceled() {
            ProbeError::Closed
        } else {
            ProbeError::Request(e)
        }
    })
}

/// One round: every server with a weight checked at once, then the results recorded and the
/// upstream's state updated.
pub(super) async fn round(health: &UpstreamHealth, settings: &HealthCheck) {
    let checks = health.weighted().map(|server| async move {
        let result = check(&server.addr, settings, &health.transport).await;
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
    /// address) and to `/host` with `Host: app.internal`; 503 to anything else. HTTP/1.1.
    async fn server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        serve(false).await
    }

    /// [`server`], speaking HTTP/1.1 or, with `h2`, HTTP/2 with prior knowledge (h2c), where
    /// the host is the `:authority`.
    async fn serve(h2: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
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
                        let (mut host, agent) = (header(HOST), header(USER_AGENT));
                        if let Some(authority) = req.uri().authority() {
                            host = authority.to_string();
                        }
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
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
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
            check(&addr, &settings("/healthz"), &Transport::default())
                .await
                .map_err(|e| e.to_string()),
            Ok(())
        );
        let failed = check(&addr, &settings("/other"), &Transport::default())
            .await
            .unwrap_err();
        assert_eq!(failed.to_string(), "answered 503");
        let accepting_503 = HealthCheck {
            statuses: vec![503],
            ..settings("/other")
        };
        assert!(check(&addr, &accepting_503, &Transport::default())
            .await
            .is_ok());
        let with_host = HealthCheck {
            host: Some("app.internal".into()),
            ..settings("/host")
        };
        assert!(check(&addr, &with_host, &Transport::default())
            .await
            .is_ok());
        assert!(check(&addr, &settings("/host"), &Transport::default())
            .await
            .is_err());
        task.abort();
    }

    #[tokio::test]
    async fn an_h2c_upstream_is_checked_over_http2() {
        use crate::proxy::Protocol;
        let (addr, task) = serve(true).await;
        let addr = addr.to_string();
        let h2c = Transport::new(Protocol::H2c, None).unwrap();
        assert_eq!(
            check(&addr, &settings("/healthz"), &h2c)
                .await
                .map_err(|e| e.to_string()),
            Ok(())
        );
        let failed = check(&addr, &settings("/other"), &h2c).await.unwrap_err();
        assert_eq!(failed.to_string(), "answered 503");
        // Spoken to as HTTP/1.1, the HTTP/2-only server fails the check.
        assert!(check(&addr, &settings("/healthz"), &Transport::default())
            .await
            .is_err());
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
        let refused = check(&closed, &settings("/healthz"), &Transport::default())
            .await
            .unwrap_err();
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
        let timed_out = check(&addr, &settings("/healthz"), &Transport::default())
            .await
            .unwrap_err();
        assert_eq!(timed_out.to_string(), "no answer within 300ms");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }
}
