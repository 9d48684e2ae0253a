//! Sending an idempotent request again when its server died under it.
//!
//! When a server dies mid-exchange (its connection closed or reset after the request went out,
//! before any response headers came back), nothing has reached the client yet, and a `GET`,
//! `HEAD` or `OPTIONS` can be sent again as it was. [`Replay`] keeps a copy of such a request's
//! head (method, URI and headers, as they go upstream) from before it is sent, and rebuilds the
//! request from it once: the upstream send path ([`super::Upstreams::send_with`]) sends the copy
//! to another server of the same version, or hands it back for the stable version. The copy is
//! made only when one of those exists (a version of one server with no stable to fall back to
//! has nowhere to send it). It is one allocation: the headers are copied into one buffer, not
//! cloned as a header map (a clone costs an allocation per custom header name and per value
//! graygate wrote, about 6 per request: that was 4% of a proxied request's CPU). The header map
//! is rebuilt from the buffer only when the request is sent again.
//!
//! Only requests without a body are kept: a body flows to the upstream as the client sends it,
//! never buffered, so once it started it cannot be sent again. A timeout (the server is slow, not
//! gone) is never retried: that would double the wait.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty};

use super::ProxyBody;

/// A bodiless idempotent request's head, kept to send it once more.
#[derive(Debug, Clone)]
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    /// The headers in order, each as its name's length (2 bytes), its value's length (4
    /// bytes), the name and the value.
    headers: Vec<u8>,
}

impl Replay {
    /// True when `request` may be sent again: `GET`, `HEAD` or `OPTIONS`, without a body, not a
    /// protocol upgrade. Copies nothing: the copy is made only where a retry could go
    /// somewhere (another server, or stable), since it costs a header map per request.
    pub fn allowed<B: Body>(request: &Request<B>, upgrade: bool) -> bool {
        let idempotent = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        idempotent && !upgrade && request.body().is_end_stream()
    }

    /// A copy of `request`'s head (whether it may be retried is [`Replay::allowed`]'s).
    pub fn of<B>(request: &Request<B>) -> Replay {
        // Room for a usual request's headers: one allocation, and no pass to measure them.
        let mut headers = Vec::with_capacity(512);
        for (name, value) in request.headers() {
            // A name is at most 64 KiB and a value at most 4 GiB long: hyper's header limits
            // are far below both, but a longer one is cut rather than wrapped.
            let name = name.as_str().as_bytes();
            let name = &name[..name.len().min(usize::from(u16::MAX))];
            let value = value.as_bytes();
            let value = &value[..value.len().min(u32::MAX as usize)];
            headers.extend_from_slice(&(name.len() as u16).to_le_bytes());
            headers.extend_from_slice(&(value.len() as u32).to_le_bytes());
            headers.extend_from_slice(name);
            headers.extend_from_slice(value);
        }
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers,
        }
    }

    /// The request again, as it was first sent; `None` if its headers cannot be rebuilt (which
    /// they always can: they were valid when copied).
    pub fn request(self) -> Option<Request<ProxyBody>> {
        let mut request = Request::new(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers_from(&self.headers)?;
        Some(request)
    }
}

/// The header map written by [`Replay::of`].
fn headers_from(mut bytes: &[u8]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    while !bytes.is_empty() {
        let (lengths, rest) = bytes.split_at_checked(6)?;
        let name_len = usize::from(u16::from_le_bytes([lengths[0], lengths[1]]));
        let value_len =
            u32::from_le_bytes([lengths[2], lengths[3], lengths[4], lengths[5]]) as usize;
        let (name, rest) = rest.split_at_checked(name_len)?;
        let (value, rest) = rest.split_at_checked(value_len)?;
        headers.append(
            HeaderName::from_bytes(name).ok()?,
            HeaderValue::from_bytes(value).ok()?,
        );
        bytes = rest;
    }
    Some(headers)
}

/// True when a failed exchange means the server's connection died before the response headers:
/// closed (the message was incomplete, the connection task ended) or reset. A parse error (the
/// server answered something that is not HTTP) is not one: the server is there, and wrong.
pub(super) fn connection_died(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return true;
    }
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io_died(io);
        }
        source = e.source();
    }
    false
}

/// True when a read or write failed because the connection died (reset, aborted, broken, or
/// closed in the middle): for hyper's client above and graygate's own (`super::h1`).
pub(super) fn io_died(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{
        Activity, SendError, SendOptions, ServerConfig, Timeouts, UpstreamConfig, UpstreamError,
        Upstreams,
    };
    use http_body_util::Full;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A raw server on 127.0.0.1:0 that reads each request head and then, for the first
    /// `die` connections, closes without a word (a server dying mid-exchange); after that it
    /// answers `200 <name>`. Counts the requests it read.
    async fn server(name: &'static str, die: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        tokio::spawn(async move {
            let mut connections = 0;
            while let Ok((stream, _)) = listener.accept().await {
                connections += 1;
                let counted = counted.clone();
                let dies = connections <= die;
                tokio::spawn(answer(stream, name, dies, counted));
            }
        });
        (addr, seen)
    }

    async fn answer(mut stream: TcpStream, name: &str, dies: bool, seen: Arc<AtomicUsize>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                seen.fetch_add(1, Ordering::SeqCst);
                if dies {
                    return;
                }
                let body = format!("{name}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                return;
            }
        }
    }

    fn table(servers: &[SocketAddr]) -> Upstreams {
        let config = UpstreamConfig {
            name: "web".into(),
            servers: servers
                .iter()
                .map(|a| ServerConfig {
                    addr: a.to_string(),
                    weight: 1,
                })
                .collect(),
            ..UpstreamConfig::default()
        };
        Upstreams::new(vec![config], &Timeouts::default()).unwrap()
    }

    fn get() -> Request<ProxyBody> {
        Request::get("/x")
            .header("host", "shop.example")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap()
    }

    fn options_for(request: &Request<ProxyBody>, fallback: bool) -> SendOptions {
        SendOptions {
            fallback,
            retryable: Replay::allowed(request, false),
            ..SendOptions::default()
        }
    }

    async fn body(exchange: crate::proxy::Exchange) -> String {
        let bytes = exchange
            .response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_get_whose_server_dies_goes_to_the_next_server() {
        let (dying, dying_seen) = server("a", usize::MAX).await;
        let (alive, _) = server("b", 0).await;
        let upstreams = table(&[dying, alive]);
        let request = get();
        let mut options = options_for(&request, true);
        let exchange = upstreams
            .send_with(0, request, &Activity::new(), &mut options)
            .await
            .expect("answered by the other server");
        assert!(options.retried);
        assert_eq!(body(exchange).await, "b\n");
        assert_eq!(
            dying_seen.load(Ordering::SeqCst),
            1,
            "sent to the dying one once"
        );
    }

    #[tokio::test]
    async fn with_no_other_server_it_comes_back_for_stable() {
        // A version that can fall back: the copy comes back, for stable.
        let (dying, _) = server("a", usize::MAX).await;
        let upstreams = table(&[dying]);
        let request = get();
        let mut options = options_for(&request, true);
        match upstreams
            .send_with(0, request, &Activity::new(), &mut options)
            .await
        {
            Err(SendError::Unreachable { request, .. }) => {
                assert_eq!(request.uri(), "/x");
                assert_eq!(request.headers()["host"], "shop.example");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(options.retried);

        // Stable of one server: nowhere to send it again, so no copy is made and the failure
        // is final.
        let (dying, seen) = server("c", usize::MAX).await;
        let upstreams = table(&[dying]);
        let request = get();
        let mut options = options_for(&request, false);
        let result = upstreams
            .send_with(0, request, &Activity::new(), &mut options)
            .await;
        assert!(
            matches!(result, Err(SendError::Failed { .. })),
            "{result:?}"
        );
        assert!(options.retry.is_none() && !options.retried);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn once_only_and_never_without_a_copy() {
        // Both servers die: one retry, then the failure is final.
        let (a, a_seen) = server("a", usize::MAX).await;
        let (b, b_seen) = server("b", usize::MAX).await;
        let upstreams = table(&[a, b]);
        let request = get();
        let mut options = options_for(&request, false);
        let result = upstreams
            .send_with(0, request, &Activity::new(), &mut options)
            .await;
        assert!(matches!(
            result,
            Err(SendError::Failed {
                error: UpstreamError::Request { .. },
                ..
            })
        ));
        assert_eq!(
            a_seen.load(Ordering::SeqCst) + b_seen.load(Ordering::SeqCst),
            2
        );

        // A POST is never copied: its failure is final at once.
        let (a, a_seen) = server("a", usize::MAX).await;
        let (b, b_seen) = server("b", 0).await;
        let upstreams = table(&[a, b]);
        let post = Request::post("/x")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let mut options = options_for(&post, false);
        assert!(!options.retryable);
        let result = upstreams
            .send_with(0, post, &Activity::new(), &mut options)
            .await;
        assert!(matches!(result, Err(SendError::Failed { .. })));
        assert_eq!(a_seen.load(Ordering::SeqCst), 1);
        assert_eq!(b_seen.load(Ordering::SeqCst), 0);
    }

    fn request(method: Method, body: &'static str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri("/a?b=c")
            .header("host", "shop.example")
            .header("x-graygate-version", "canary")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[test]
    fn only_bodiless_idempotent_requests_are_sent_again() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(
                Replay::allowed(&request(method.clone(), ""), false),
                "{method}"
            );
            assert!(
                !Replay::allowed(&request(method.clone(), "x"), false),
                "{method} with a body"
            );
            assert!(
                !Replay::allowed(&request(method.clone(), ""), true),
                "{method} upgrade"
            );
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(
                !Replay::allowed(&request(method.clone(), ""), false),
                "{method}"
            );
        }
    }

    #[test]
    fn the_copy_is_the_request_as_it_was() {
        let original = request(Method::GET, "");
        let again = Replay::of(&original).request().unwrap();
        assert_eq!(again.method(), original.method());
        assert_eq!(again.uri(), original.uri());
        assert_eq!(again.version(), original.version());
        assert_eq!(again.headers(), original.headers());
        assert!(again.body().is_end_stream());
    }

    #[test]
    fn the_copy_keeps_repeated_fields_their_order_and_any_byte_a_value_may_hold() {
        let mut original = request(Method::GET, "");
        let h = original.headers_mut();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        h.append("x-empty", HeaderValue::from_static(""));
        h.append("x-latin", HeaderValue::from_bytes(b"caf\xe9\tok").unwrap());
        h.append(
            "x-long",
            HeaderValue::from_str(&"v".repeat(70_000)).unwrap(),
        );
        let again = Replay::of(&original).request().unwrap();
        let fields = |h: &HeaderMap| -> Vec<(String, Vec<u8>)> {
            h.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(fields(again.headers()), fields(original.headers()));
    }

    #[test]
    fn a_damaged_copy_is_no_request_rather_than_a_wrong_one() {
        let mut copy = Replay::of(&request(Method::GET, ""));
        copy.headers.truncate(copy.headers.len() - 1);
        assert!(copy.request().is_none());
    }
}
