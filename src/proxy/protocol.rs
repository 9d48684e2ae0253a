//! Which HTTP a client connection speaks, decided before hyper sees it.
//!
//! On a TLS listener the client said it in the handshake (ALPN `h2` or `http/1.1`, nothing means
//! HTTP/1.1). On a plain listener a client may start HTTP/2 with prior knowledge (h2c): its first
//! bytes are then the connection preface, `PRI * HTTP/2.0`. [`detect`] reads until the first bytes
//! either are the preface or cannot be, and leaves them for the chosen protocol to read first
//! (in front of the stream, [`Rewind`]), so that it reads the connection from its first byte.
//!
//! Why not hyper-util's `auto` builder, which does the same: its HTTP/1 side has no
//! `max_header_size` (graygate's `max_header_bytes` and its 431 would be lost), and its preface
//! read has no time bound, so a client that connects and sends nothing would hold its connection
//! for ever. Here the wait is bounded by the header timeout, and each protocol gets hyper's own
//! builder with every setting it has.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 3.4): what an h2c client with prior knowledge sends
/// first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The ALPN protocol names graygate offers, best first.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1's ALPN name.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What a first read takes: hyper's own first read would take as much, so the bytes read here
/// cost no extra system call.
const FIRST_READ: usize = 8192;

/// The HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0), with keep-alive and upgrades.
    Http1,
    /// HTTP/2: over TLS by ALPN, or h2c with prior knowledge.
    Http2,
}

impl Protocol {
    /// The protocol a TLS client chose by ALPN; HTTP/1.1 when it chose none.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(ALPN_H2) => Protocol::Http2,
            _ => Protocol::Http1,
        }
    }
}

/// Why [`detect`] gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The client closed the connection before sending a byte (or mid-preface).
    #[error("the client closed the connection before a request")]
    Closed,
    /// Nothing conclusive within the time bound.
    #[error("no request within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the first bytes of a plain connection into `read`, at most `within`, until they are
/// the HTTP/2 preface (HTTP/2 with prior knowledge) or cannot be (HTTP/1.1: any request line does
/// not start with `PRI *`). The bytes read stay in `read`, for the chosen protocol to read first
/// ([`Rewind`]). The stream is borrowed, not taken, so that the connection's task holds it in one
/// place through this look and after it.
pub async fn detect<S>(
    stream: &mut S,
    read: &mut BytesMut,
    within: Duration,
) -> Result<Protocol, DetectError>
where
    S: AsyncRead + Unpin,
{
    if read.capacity() < FIRST_READ {
        read.reserve(FIRST_READ);
    }
    tokio::time::timeout(within, async {
        loop {
            if let Some(protocol) = decide(read) {
                return Ok(protocol);
            }
            if stream.read_buf(read).await? == 0 {
                return Err(DetectError::Closed);
            }
        }
    })
    .await
    .map_err(|_| DetectError::TimedOut(within))?
}

/// `Some` once the first bytes decide the protocol.
fn decide(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` is read first, then `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// The bytes not read yet, and the stream behind them.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An empty `Bytes` advanced to its end still holds the whole buffer `detect`
                // read into (8 KiB): let it go now, not when the connection closes, so that an
                // idle kept-alive connection does not keep it.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn the_first_bytes_decide() {
        assert_eq!(decide(b""), None);
        assert_eq!(decide(b"P"), None);
        assert_eq!(decide(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(decide(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            decide(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(Protocol::Http2)
        );
        assert_eq!(decide(b"G"), Some(Protocol::Http1));
        assert_eq!(decide(b"POST / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(decide(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
    }

    #[test]
    fn alpn_picks_the_protocol() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Http1);
    }

    #[tokio::test]
    async fn detected_bytes_are_read_again() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let detecting = tokio::spawn(async move {
            let mut read = BytesMut::new();
            let protocol = detect(&mut server, &mut read, Duration::from_secs(5)).await;
            (protocol, read, server)
        });
        // The preface in two writes: undecided after the first.
        tokio::task::yield_now().await;
        client.write_all(b"\r\nSM\r\n\r\nrest").await.unwrap();
        let (protocol, read, server) = detecting.await.unwrap();
        assert_eq!(protocol.unwrap(), Protocol::Http2);
        let mut rewound = Rewind::new(read.freeze(), server);
        let mut all = vec![0u8; H2_PREFACE.len() + 4];
        rewound.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..H2_PREFACE.len()], H2_PREFACE);
        assert_eq!(&all[H2_PREFACE.len()..], b"rest");
    }

    #[tokio::test]
    async fn the_read_buffer_is_let_go_once_read_again() {
        // Seen from outside: the prefix's buffer has one owner again (this test's) as soon as
        // its last byte was read, while the stream itself lives on.
        let first = Bytes::from(b"GET / HTTP/1.1\r\n".to_vec());
        let (_client, server) = tokio::io::duplex(64);
        let mut rewound = Rewind::new(first.clone(), server);
        let mut part = [0u8; 4];
        rewound.read_exact(&mut part).await.unwrap();
        assert_eq!(&part, b"GET ");
        assert!(!first.is_unique(), "let go before its end");
        let mut rest = vec![0u8; first.len() - 4];
        rewound.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, &first[4..]);
        assert!(first.is_unique(), "still held after its last byte was read");
    }

    #[tokio::test]
    async fn silence_and_early_close_end_the_wait() {
        let (_client, mut server) = tokio::io::duplex(64);
        let silent = detect(&mut server, &mut BytesMut::new(), Duration::from_millis(50)).await;
        assert!(
            matches!(silent, Err(DetectError::TimedOut(_))),
            "{silent:?}"
        );

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let closed = detect(&mut server, &mut BytesMut::new(), Duration::from_secs(5)).await;
        assert!(matches!(closed, Err(DetectError::Closed)), "{closed:?}");
    }
}
