//! The backend of `graygate demo` and of the end-to-end tests: a small HTTP/1.1 server on a free
//! loopback port that answers every request with its name.
//!
//! One backend for both, so that what the demo shows is what the tests check. Each response is
//! `<name>\n` with, for the tests:
//! - every request header echoed back as an `echo-<header>` response header, so that a test sees
//!   what graygate forwarded (`X-Forwarded-For`, the version header);
//! - `x-body-bytes`: how many body bytes arrived, so that a large upload can be checked whole
//!   without echoing it;
//! - a request counter, read with [`Backend::requests`];
//! - misbehaviour on purpose, switched at any time: [`Backend::fail_every`] answers `500` to
//!   every n-th request (n = 20: 5% exactly), [`Backend::delay`] answers each request that much
//!   later. The rollout demo and tests make a bad canary with them.
//!
//! The server runs on the caller's tokio runtime and stops when the [`Backend`] is dropped.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a backend misbehaves, changed while it runs.
#[derive(Default)]
struct Faults {
    /// Every n-th request gets a 500 (0: none).
    fail_every: AtomicUsize,
    /// Each answer waits this long first, in microseconds.
    delay_us: AtomicU64,
}

/// A running backend. Dropping it stops accepting connections.
pub struct Backend {
    name: Arc<str>,
    addr: SocketAddr,
    /// Requests answered so far: tests wait on it to act in the middle of load.
    requests: Arc<AtomicUsize>,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Binds 127.0.0.1 port 0 and starts answering as `name`.
    pub async fn start(name: &str) -> std::io::Result<Backend> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let requests = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(Faults::default());
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&name),
            Arc::clone(&requests),
            Arc::clone(&faults),
        ));
        Ok(Backend {
            name,
            addr,
            requests,
            faults,
            task,
        })
    }

    /// From now on, every `n`-th request is answered `500 Internal Server Error` (`n` = 10:
    /// 10% of the requests); 0 stops it.
    pub fn fail_every(&self, n: usize) {
        self.faults.fail_every.store(n, Ordering::Relaxed);
    }

    /// From now on, each answer waits `delay` first (zero: none).
    pub fn delay(&self, delay: Duration) {
        self.faults
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
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

async fn serve(
    listener: tokio::net::TcpListener,
    name: Arc<str>,
    requests: Arc<AtomicUsize>,
    faults: Arc<Faults>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (name, requests, faults) = (
            Arc::clone(&name),
            Arc::clone(&requests),
            Arc::clone(&faults),
        );
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (name, requests, faults) = (
                    Arc::clone(&name),
                    Arc::clone(&requests),
                    Arc::clone(&faults),
                );
                async move {
                    let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
                    let delay = faults.delay_us.load(Ordering::Relaxed);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_micros(delay)).await;
                    }
                    let mut response = answer(&name, request).await;
                    let every = faults.fail_every.load(Ordering::Relaxed);
                    if every > 0 && n % every == 0 {
                        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok::<_, Infallible>(response)
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

        // Misbehaving on purpose: every 2nd request fails, each answer waits 30ms.
        backend.fail_every(2);
        backend.delay(Duration::from_millis(30));
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let started = std::time::Instant::now();
            let request = hyper::Request::get("/")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert!(started.elapsed() >= Duration::from_millis(30));
            statuses.push(response.status().as_u16());
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(statuses, [200, 500, 200, 500], "requests 3 to 6");
        backend.fail_every(0);
        backend.delay(Duration::ZERO);
    }
}
