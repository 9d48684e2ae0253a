//! HTTP/2 with prior knowledge (h2c) on plain listeners: a client that starts with the HTTP/2
//! connection preface is served HTTP/2, any other HTTP/1.1 as before.
//!
//! [`sniff`] reads the first bytes of a connection (at most the 24 of the preface) and hands
//! them back in front of the stream ([`Prefixed`]), so that the chosen server reads the
//! connection from its first byte. It is done here rather than with hyper-util's auto builder
//! because that builder exposes no `max_header_size` for HTTP/1.1 (graygate's
//! `max_header_bytes`, answered 431) and waits for the first bytes without a time limit; here
//! the wait is bounded by the header timeout, and the HTTP/1.1 server keeps every setting it had.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};

/// The HTTP/2 connection preface (RFC 9113 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose first bytes were read to tell its protocol.
pub(super) enum Sniffed<I> {
    /// Anything but the preface: HTTP/1.x (or garbage, for the HTTP/1.1 server to refuse).
    Http1(Prefixed<I>),
    /// The HTTP/2 preface.
    Http2(Prefixed<I>),
}

/// Reads until the bytes read so far cannot be the preface, or are all of it, or the client
/// closes; at most `timeout` (then `TimedOut`: a client that sends nothing is closed as the
/// HTTP/1.1 header timeout would).
pub(super) async fn sniff<I: Read + Unpin>(io: I, timeout: Duration) -> io::Result<Sniffed<I>> {
    let mut prefixed = Prefixed {
        io,
        prefix: [0; PREFACE.len()],
        start: 0,
        end: 0,
    };
    let read = async {
        loop {
            let end = prefixed.end;
            let n = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut prefixed.prefix[end..]);
                match Pin::new(&mut prefixed.io).poll_read(cx, buf.unfilled()) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await?;
            prefixed.end += n;
            let seen = &prefixed.prefix[..prefixed.end];
            if n == 0 || seen != &PREFACE[..seen.len()] {
                return Ok::<bool, io::Error>(false);
            }
            if seen.len() == PREFACE.len() {
                return Ok(true);
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, read).await;
    match outcome {
        Ok(Ok(true)) => Ok(Sniffed::Http2(prefixed)),
        Ok(Ok(false)) => Ok(Sniffed::Http1(prefixed)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no request within the header timeout",
        )),
    }
}

/// A stream with the bytes [`sniff`] read put back in front of it.
pub(super) struct Prefixed<I> {
    io: I,
    prefix: [u8; PREFACE.len()],
    /// The next byte of `prefix` to hand out.
    start: usize,
    /// The bytes of `prefix` read from `io`.
    end: usize,
}

impl<I: Read + Unpin> Read for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start < this.end {
            let n = (this.end - this.start).min(buf.remaining());
            buf.put_slice(&this.prefix[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn sniffed(sent: &[u8], close: bool) -> (bool, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1024);
        let (_reader, mut writer) = tokio::io::split(client);
        writer.write_all(sent).await.unwrap();
        if close {
            writer.shutdown().await.unwrap();
        }
        let result = sniff(TokioIo::new(server), Duration::from_secs(5))
            .await
            .unwrap();
        let (h2, prefixed) = match result {
            Sniffed::Http1(p) => (false, p),
            Sniffed::Http2(p) => (true, p),
        };
        // Whatever was read comes back first, then the rest of the stream.
        if !close {
            writer.write_all(b"+more").await.unwrap();
            writer.shutdown().await.unwrap();
        }
        let mut all = Vec::new();
        let mut io = TokioIo::new(prefixed);
        io.read_to_end(&mut all).await.unwrap();
        (h2, all)
    }

    #[tokio::test]
    async fn the_preface_is_http2_and_is_read_again() {
        let (h2, all) = sniffed(PREFACE, false).await;
        assert!(h2);
        assert_eq!(all, [&PREFACE[..], b"+more"].concat());
    }

    #[tokio::test]
    async fn anything_else_is_http1_and_is_read_again() {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (h2, all) = sniffed(request, false).await;
        assert!(!h2);
        assert_eq!(all, [&request[..], b"+more"].concat());

        // A client that closes early, even mid-preface, goes to the HTTP/1.1 server to fail.
        let (h2, all) = sniffed(&PREFACE[..10], true).await;
        assert!(!h2);
        assert_eq!(all, &PREFACE[..10]);
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let Err(e) = sniff(TokioIo::new(server), Duration::from_millis(50)).await else {
            panic!("a silent client was sniffed");
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
