//! The metrics listener: a small HTTP/1.1 server, apart from the traffic listeners, so that a
//! scrape never competes with clients for a connection and the metrics are never exposed on the
//! public port.
//!
//! # Endpoints
//! - `GET /metrics` (also `HEAD`): every metric in the Prometheus text format
//!   (`text/plain; version=0.0.4`).
//! - anything else: 404 (405 for another method on `/metrics`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::JoinSet;

use super::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::proxy::listen::{self, ConnectionLimit};

/// A scraper must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener`, at most `limit` connections at once (`[metrics]
/// max_connections`: more wait in the listen backlog), until `shutdown` resolves; then closes the
/// listener and every scrape connection (a scrape in progress is cut off: metrics are not worth
/// delaying a stop).
pub async fn serve_metrics(
    listener: listen::Listener,
    metrics: Arc<Metrics>,
    limit: ConnectionLimit,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every scrape.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            (stream, _, slot) = listen::accept(&listener, &limit) => {
                let metrics = metrics.clone();
                let service = service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    drop(slot);
                });
            }
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// One scrape (or a wrong request).
fn answer(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "graygate: only /metrics here\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "graygate: use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Sources;
    use http_body_util::BodyExt;
    use tokio::sync::oneshot;

    async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "metrics")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn answers_metrics_and_nothing_else_and_stops() {
        let listener = listen::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(Sources::default()));
        metrics.connection_opened();
        let (stop, stopped) = oneshot::channel::<()>();
        let limit = ConnectionLimit::new("metrics", 2);
        let server = tokio::spawn(serve_metrics(listener, metrics, limit, async move {
            let _ = stopped.await;
        }));

        let (status, content_type, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4");
        assert!(body.contains("\ngraygate_open_connections 1\n"), "{body}");

        assert_eq!(get(addr, "GET", "/").await.0, 404);
        assert_eq!(get(addr, "POST", "/metrics").await.0, 405);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
