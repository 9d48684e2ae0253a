//! The backend of `graygate demo` and of the end-to-end tests: a small HTTP/1.1 server on a free
//! loopback port that answers every request with its name.
//!
//! One backend for both, so that what the demo shows is what the tests check. Each response is
//! `<name>\n` with, for the tests:
//! - every request header echoed back as an `echo-<header>` response header, so that a test sees
//!   what graygate forwarded (`X-Forwarded-For`, the version header);
//! - `x-body-bytes`: how many body bytes arrived, so that a large upload can be checked whole
//!   without echoing it;
//! - a request counter, read with [`Backend::requests`].
//!
//! The server runs on the caller's tokio runtime and stops when the [`Backend`] is dropped.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A running backend. Dropping it stops accepting connections.
pub struct Backend {
    name: Arc<str>,
    addr: SocketAddr,
    /// Requests answered so far: tests wait on it to act in the middle of load.
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Binds 127.0.0.1 port 0 and starts answering as `name`.
    pub async fn start(name: &str) -> std::io::Result<Backend> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let requests = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, Arc::clone(&name), Arc::clone(&requests)));
        Ok(Backend {
            name,
            addr,
            requests,
            task,
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: tokio::net::TcpListener, name: Arc<str>, requests: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (name, requests) = (Arc::clone(&name), Arc::clone(&requests));
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (name, requests) = (Arc::clone(&name), Arc::clone(&requests));
                async move {
                    requests.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(answer(&name, request).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `<name>\n`, the request headers as `echo-<header>`, and the body's length in `x-body-bytes`.
async fn answer(
    name: &str,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let mut echoed = http::HeaderMap::new();
    for (header, value) in request.headers() {
        if let Ok(echo) = HeaderName::from_bytes(format!("echo-{header}").as_bytes()) {
            echoed.append(echo, value.clone());
        }
    }
    let mut body = request.into_body();
    let mut bytes = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(format!("{name}\n"))));
    *response.headers_mut() = echoed;
    response
        .headers_mut()
        .insert("x-body-bytes", HeaderValue::from(bytes));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_with_its_name_echoes_headers_and_counts() {
        let backend = Backend::start("canary").await.unwrap();
        assert_eq!(backend.name(), "canary");
        let stream = tokio::net::TcpStream::connect(backend.addr())
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for round in 1..=2 {
            let request = hyper::Request::post("/upload")
                .header("host", "example.com")
                .header("x-user-id", "42")
                .body(Full::new(Bytes::from(vec![b'x'; 1000])))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.headers()["echo-x-user-id"], "42");
            assert_eq!(response.headers()["echo-host"], "example.com");
            assert_eq!(response.headers()["x-body-bytes"], "1000");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "canary\n");
            assert_eq!(backend.requests(), round);
        }
    }
}
