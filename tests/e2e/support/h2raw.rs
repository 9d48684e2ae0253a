//! HTTP/2 frames written by hand on a plain socket (prior knowledge), for the tests of the flood
//! limits: a well-behaved client library will not send the 101st concurrent stream, a header
//! block past the advertised size, or an endless run of CONTINUATION frames.
//!
//! Header blocks are HPACK with literal fields only (no Huffman, no dynamic table), which every
//! decoder reads.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Frame types (RFC 9113 6).
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes.
pub const REFUSED_STREAM: u32 = 0x7;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame read from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// An HTTP/2 connection driven frame by frame.
pub struct RawH2 {
    stream: TcpStream,
}

impl RawH2 {
    /// Connects, sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(PREFACE).await.expect("the preface");
        let mut h2 = RawH2 { stream };
        h2.send(SETTINGS, 0, 0, &[]).await.expect("SETTINGS");
        h2
    }

    /// Writes one frame.
    pub async fn send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let len = payload.len() as u32;
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&len.to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await
    }

    /// Reads the next frame (`None`: the server closed the connection). SETTINGS from the
    /// server are acknowledged on the way and returned too.
    pub async fn read(&mut self) -> std::io::Result<Option<Frame>> {
        let mut head = [0u8; 9];
        match self.stream.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).await?;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            self.send(SETTINGS, ACK, 0, &[]).await?;
        }
        Ok(Some(frame))
    }

    /// Reads frames until `wanted` says yes; `None` if the connection ended or `limit` passed.
    pub async fn read_until(
        &mut self,
        limit: Duration,
        mut wanted: impl FnMut(&Frame) -> bool,
    ) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read()).await;
            match frame {
                Ok(Ok(Some(frame))) if wanted(&frame) => return Some(frame),
                Ok(Ok(Some(_))) => continue,
                _ => return None,
            }
        }
    }
}

/// An HPACK integer with an `n`-bit prefix, `flags` in the bits above it.
fn int(out: &mut Vec<u8>, n: u32, flags: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    int(out, 7, 0, s.len());
    out.extend_from_slice(s);
}

/// A header field as a literal without indexing, with a new name.
pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    string(&mut out, name.as_bytes());
    string(&mut out, value);
    out
}

/// The header block of `GET <path>` on `authority` over `http`.
pub fn get(authority: &str, path: &str) -> Vec<u8> {
    // :method GET and :scheme http are static table entries 2 and 6.
    let mut out = vec![0x82, 0x86];
    // :path (entry 4) and :authority (entry 1) as literals with an indexed name.
    int(&mut out, 4, 0x00, 4);
    string(&mut out, path.as_bytes());
    int(&mut out, 4, 0x00, 1);
    string(&mut out, authority.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_rfc_7541_c1() {
        let mut out = Vec::new();
        int(&mut out, 5, 0, 10);
        assert_eq!(out, [10]);
        let mut out = Vec::new();
        int(&mut out, 5, 0, 1337);
        assert_eq!(out, [31, 154, 10]);
    }
}
