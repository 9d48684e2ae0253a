//! A small HTTP/1.1 client for the tests: one keep-alive connection, reconnecting when it closes,
//! that returns status, headers and body text.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// A keep-alive HTTP/1.1 client on one connection, reconnecting when it closes.
pub struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

/// A response: status, headers, body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, sender: None }
    }

    /// GET / with these headers.
    pub async fn get(&mut self, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", "/", headers, Bytes::new()).await
    }

    /// GET `path` with these headers.
    pub async fn get_path(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers, Bytes::new()).await
    }

    /// Sends one request (`Host: example.com` unless given) and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        for attempt in 0..2 {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr));
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("HTTP/1.1 handshake");
                tokio::spawn(conn);
                self.sender = Some(sender);
            }
            let Some(sender) = self.sender.as_mut() else {
                unreachable!("connected above")
            };
            if sender.ready().await.is_err() {
                self.sender = None;
                continue;
            }
            let mut req = hyper::Request::builder().method(method).uri(path);
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
                req = req.header("host", "example.com");
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(body.clone())).expect("a valid request");
            match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .expect("read body")
                        .to_bytes();
                    return Reply {
                        status,
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    };
                }
                Err(e) if attempt == 0 && e.is_canceled() => self.sender = None,
                Err(e) => panic!("request failed: {e}"),
            }
        }
        panic!("request failed twice");
    }

    /// The body of GET / with these headers, trimmed: the name of the backend that answered.
    pub async fn version(&mut self, headers: &[(&str, &str)]) -> String {
        let r = self.get(headers).await;
        assert_eq!(r.status, 200, "status for {headers:?}: {r:?}");
        r.body.trim().to_string()
    }

    /// Asserts, case after case on this connection, which version answers GET / with each
    /// case's headers: a table of `(headers, version)`.
    pub async fn assert_versions(&mut self, cases: &[(&[(&str, &str)], &str)]) {
        for (headers, want) in cases {
            assert_eq!(self.version(headers).await, *want, "headers {headers:?}");
        }
    }
}
