//! HTTP/2 towards clients: the limits every connection is served with, and what an HTTP/2
//! request needs before it walks the same phases as an HTTP/1.1 one.
//!
//! Every stream is one request through `handle`, so the policy decides per request, never per
//! connection: two streams of one connection can land on two versions.
//!
//! # Flood limits (on by default)
//! - **Concurrent streams** ([`Http2Settings::max_concurrent_streams`], default 100): advertised
//!   in SETTINGS; a stream beyond it is refused (`RST_STREAM REFUSED_STREAM`).
//! - **Header list size**: advertised as `max_header_bytes`, the same bound as an HTTP/1.1
//!   request head; a larger header block is refused (431, or the stream reset) and never held.
//!   It also bounds a CONTINUATION flood: the h2 crate stops a header block that grows past it,
//!   or that takes too many CONTINUATION frames, with a GOAWAY.
//! - **Rapid Reset** (CVE-2023-44487, [`Http2Settings::max_pending_accept_reset_streams`],
//!   default 20): a client that opens streams and resets them before they are served is cut off
//!   with `GOAWAY ENHANCE_YOUR_CALM` once that many are pending.
//! - **Streams reset by graygate for the client's errors**
//!   ([`Http2Settings::max_local_error_reset_streams`], default 1024): a client that keeps
//!   provoking them is cut off the same way.
//!
//! An HTTP/2 connection with no open stream is closed (GOAWAY) after the header timeout, as an
//! idle HTTP/1.1 keep-alive connection is.
//!
//! # `:authority` and `Host`
//! An HTTP/2 request names its host in `:authority`; an HTTP/1.1 upstream needs `Host`.
//! [`host_from_authority`] sets `Host` from `:authority` before routing (RFC 9113 8.3.1), so that
//! routing and the upstream see the same host; a `Host` header that names another host is
//! refused (400). Connection-specific headers (`Connection`, `Keep-Alive`, `Transfer-Encoding`,
//! `Upgrade`, `Proxy-Connection`, a `TE` other than `trailers`) cannot reach graygate over HTTP/2
//! (the h2 crate refuses such a request as malformed), and the response rewrite removes them
//! from an HTTP/1.1 upstream's response before it goes to an HTTP/2 client.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ProxyBody;

/// Default of [`Http2Settings::max_concurrent_streams`].
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Default of [`Http2Settings::max_pending_accept_reset_streams`] (the h2 crate's own).
pub const DEFAULT_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Default of [`Http2Settings::max_local_error_reset_streams`] (hyper's own).
pub const DEFAULT_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The `[http2]` limits of client connections. See the module documentation for what each one
/// stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Streams reset by the client before graygate served them, held at once, before the
    /// connection is closed (Rapid Reset).
    pub max_pending_accept_reset_streams: usize,
    /// Streams graygate reset because of the client's protocol errors before the connection is
    /// closed.
    pub max_local_error_reset_streams: usize,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_pending_accept_reset_streams: DEFAULT_MAX_PENDING_ACCEPT_RESET_STREAMS,
            max_local_error_reset_streams: DEFAULT_MAX_LOCAL_ERROR_RESET_STREAMS,
        }
    }
}

/// hyper's HTTP/2 server builder with these limits; the header list size is `max_header_bytes`.
pub(super) fn builder(
    settings: &Http2Settings,
    max_header_bytes: usize,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(settings.max_local_error_reset_streams)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Why an HTTP/2 request cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// `Host` and `:authority` name different hosts (RFC 9113 8.3.1: malformed).
    #[error("Host and :authority name different hosts")]
    HostDiffers,
}

impl AuthorityError {
    /// The body of graygate's 400 answer.
    pub fn body(self) -> &'static str {
        match self {
            AuthorityError::HostDiffers => "graygate: Host and :authority differ\n",
        }
    }
}

/// Sets `Host` from `:authority` on an HTTP/2 request (kept when it has none), so that routing
/// and an HTTP/1.1 upstream see the host the client asked for. A `Host` header that names
/// another host is an error.
pub fn host_from_authority<B>(req: &mut Request<B>) -> Result<(), AuthorityError> {
    let Some(authority) = req.uri().authority() else {
        return Ok(());
    };
    let authority = authority.as_str();
    let mut hosts = req.headers().get_all(HOST).iter();
    if hosts.any(|h| !h.as_bytes().eq_ignore_ascii_case(authority.as_bytes())) {
        return Err(AuthorityError::HostDiffers);
    }
    if let Ok(value) = HeaderValue::from_str(authority) {
        req.headers_mut().insert(HOST, value);
    }
    Ok(())
}

/// How many streams of one HTTP/2 connection are open, and since when none is: what closes an
/// idle connection.
#[derive(Debug)]
pub(super) struct Streams {
    open: AtomicUsize,
    born: Instant,
    /// When the last stream ended, in nanoseconds after `born`.
    last_end: AtomicU64,
}

impl Streams {
    pub(super) fn new() -> Arc<Streams> {
        Arc::new(Streams {
            open: AtomicUsize::new(0),
            born: Instant::now(),
            last_end: AtomicU64::new(0),
        })
    }

    /// A stream starts; it ends when the guard is dropped.
    pub(super) fn open(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenStream(self.clone())
    }

    /// How long no stream has been open; `None` while one is.
    pub(super) fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = Duration::from_nanos(self.last_end.load(Ordering::SeqCst));
        Some(self.born.elapsed().saturating_sub(since))
    }
}

/// One open stream of [`Streams`].
#[derive(Debug)]
pub(super) struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let streams = &self.0;
        let now = u64::try_from(streams.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        streams.last_end.store(now, Ordering::SeqCst);
        streams.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its stream counted as open until it is done.
pub(super) struct OpenStreamBody {
    pub(super) inner: ProxyBody,
    pub(super) _open: OpenStream,
}

impl Body for OpenStreamBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2_request(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri).version(http::Version::HTTP_2);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_comes_from_the_authority() {
        let mut req = h2_request("https://app.example:8443/a?b", &[]);
        host_from_authority(&mut req).unwrap();
        assert_eq!(req.headers()[HOST], "app.example:8443");

        let mut same = h2_request("https://app.example/a", &["APP.example"]);
        host_from_authority(&mut same).unwrap();
        assert_eq!(same.headers()[HOST], "app.example");
        assert_eq!(same.headers().get_all(HOST).iter().count(), 1);

        let mut other = h2_request("https://app.example/a", &["evil.example"]);
        assert_eq!(
            host_from_authority(&mut other),
            Err(AuthorityError::HostDiffers)
        );

        // No :authority: the Host header, if any, stays as sent.
        let mut bare = h2_request("/a", &["kept.example"]);
        host_from_authority(&mut bare).unwrap();
        assert_eq!(bare.headers()[HOST], "kept.example");
    }

    #[test]
    fn streams_count_open_and_idle_time() {
        let streams = Streams::new();
        assert!(streams.idle_for().is_some());
        let a = streams.open();
        let b = streams.open();
        assert_eq!(streams.idle_for(), None);
        drop(a);
        assert_eq!(streams.idle_for(), None);
        drop(b);
        let idle = streams.idle_for().expect("no stream open");
        assert!(idle < Duration::from_secs(5), "{idle:?}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let d = Http2Settings::default();
        assert_eq!(d.max_concurrent_streams, 100);
        assert_eq!(d.max_pending_accept_reset_streams, 20);
        assert_eq!(d.max_local_error_reset_streams, 1024);
    }
}
