//! TLS termination for the `[tls]` listeners: rustls (ring) through tokio-rustls, TLS 1.2 and
//! 1.3, ALPN `h2` then `http/1.1`, certificates chosen by SNI and reloaded without a restart.
//!
//! A TLS connection is accepted like a plain one; its handshake runs on the connection's own
//! task, bounded by the header timeout, and the protocol the client chose by ALPN picks hyper's
//! HTTP/2 or HTTP/1.1 server for it. After that the request walks the same phases as on a plain
//! listener.
//!
//! # Files
//! - `certs`: reading a certificate and key from PEM files and checking them (parse, expiry,
//!   the key is the certificate's), with errors that name the file.
//! - `sni`: which certificate a handshake gets (exact name, wildcard, default).
//! - `live`: the set in force, reloaded on SIGHUP and when the files change; warns of a
//!   certificate in force that ends within two weeks.
//! - `failures`: handshakes that did not complete, counted by a small fixed set of reasons for
//!   the metrics.
//! - `redirect`: `redirect_http`, plain requests answered with a 308 to HTTPS.

mod certs;
mod failures;
mod live;
mod redirect;
mod sni;

pub use certs::{CertError, CertFiles, LoadedCert, PemPair, Which};
pub use failures::{HandshakeFailure, HandshakeFailures};
pub use live::{CertsReloaded, LiveCerts, EXPIRY_WARNING};
pub use redirect::HttpsRedirect;
pub use sni::{CertSet, SniResolver};

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::protocol::{Protocol, ALPN_H2, ALPN_HTTP1};

/// Checks `[tls] certs` as a start would load them, without serving them: what
/// `graygate check` (through the config) runs. Every entry is read and loaded; the first error
/// comes back with the index of its entry.
pub fn check_certs(files: &[CertFiles]) -> Result<Vec<LoadedCert>, (usize, CertError)> {
    let provider = provider();
    let now = SystemTime::now();
    let mut loaded = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let pem = certs::read(f).map_err(|e| (i, e))?;
        loaded.push(certs::load(f, &pem, &provider, now).map_err(|e| (i, e))?);
    }
    // The names rule (only the first may have none) is the set's.
    if let Some(i) = loaded.iter().skip(1).position(|c| c.names.is_empty()) {
        let file = loaded[i + 1].files.cert.clone();
        return Err((i + 1, CertError::NoNames { file }));
    }
    Ok(loaded)
}

/// A self-signed certificate and key for `names`, valid until 2999, for other modules' tests.
#[cfg(test)]
pub(crate) fn testing_pair(names: &[&str]) -> PemPair {
    certs::testing::self_signed(names, 2999)
}

/// The crypto graygate's TLS runs on: rustls' ring provider (no OpenSSL), with the cipher suites
/// whose hash is SHA-256 first (AES-128-GCM, then ChaCha20-Poly1305, then AES-256-GCM with
/// SHA-384), chosen in this order whatever the client's ([`rustls::ServerConfig::ignore_client_order`]).
/// Every client offers AES-128-GCM; the key schedule of a handshake is a few dozen hashes, and
/// ring's SHA-256 runs on the CPU's SHA extensions where its SHA-384 does not: with the SHA-384
/// suite first (rustls' default order, and the client's usual one), SHA-512 blocks were 13% of
/// the CPU of a load of new connections.
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite::*;
    CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// Why a TLS handshake did not complete. Clients and scanners cause these all the time: they
/// are logged at debug level only.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Failed(#[from] io::Error),
    #[error("TLS handshake not done within {0:?}")]
    TimedOut(Duration),
}

impl HandshakeError {
    /// Why, as the metrics count it.
    pub fn reason(&self) -> HandshakeFailure {
        match self {
            HandshakeError::Failed(e) => HandshakeFailure::of(e),
            HandshakeError::TimedOut(_) => HandshakeFailure::Timeout,
        }
    }
}

/// What terminates TLS on the `[tls]` listeners: the rustls server config (shared by all of
/// them), the certificates in force, and the count of handshakes that failed.
#[derive(Clone)]
pub struct TlsTerminator {
    acceptor: tokio_rustls::TlsAcceptor,
    certs: Arc<LiveCerts>,
    failures: Arc<HandshakeFailures>,
}

impl TlsTerminator {
    /// Loads the certificates (blocking: at start) and builds the server config.
    pub fn new(files: &[CertFiles]) -> Result<TlsTerminator, CertError> {
        let provider = Arc::new(provider());
        let certs = Arc::new(LiveCerts::load(files, provider.clone())?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(certs.resolver());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        config.ignore_client_order = true;
        // Session resumption by stateless tickets (encrypted with a key rotated every 6 hours),
        // as nginx does by default: a returning client offers its ticket again and gets an
        // abbreviated handshake, however many clients came between. rustls's default keeps
        // sessions in a cache of 256 entries whose TLS 1.3 tickets are good once.
        // Making the key needs the system's randomness; without it, the cache stays.
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => config.ticketer = ticketer,
            Err(e) => {
                tracing::warn!(error = %e, "TLS session tickets off (no key): sessions resume from a cache of 256")
            }
        }
        Ok(TlsTerminator {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certs,
            failures: Arc::default(),
        })
    }

    /// The certificates in force, for reloads.
    pub fn certs(&self) -> &Arc<LiveCerts> {
        &self.certs
    }

    /// The handshakes that failed since start, by reason, on every listener of this
    /// terminator.
    pub fn failures(&self) -> &HandshakeFailures {
        &self.failures
    }

    /// Runs the server side of the handshake, at most `within`; the stream and the protocol
    /// the client chose. A handshake that fails is counted in [`TlsTerminator::failures`]; one
    /// given up (its future dropped, at shutdown) is not.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        within: Duration,
    ) -> Result<(TlsStream<TcpStream>, Protocol), HandshakeError> {
        let accepted = match tokio::time::timeout(within, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::TimedOut(within)),
        };
        let stream = accepted.inspect_err(|e| self.failures.count(e.reason()))?;
        let protocol = Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
        Ok((stream, protocol))
    }
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("certs", &self.certs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A terminator serving a self-signed certificate for `a.example`, written into `dir`; and
    /// that certificate, for clients to trust.
    fn terminator(dir: &std::path::Path) -> (TlsTerminator, PemPair) {
        let pem = testing_pair(&["a.example"]);
        let files = CertFiles {
            cert: dir.join("site.pem"),
            key: dir.join("site.key"),
        };
        std::fs::write(&files.cert, &pem.cert).unwrap();
        std::fs::write(&files.key, &pem.key).unwrap();
        (TlsTerminator::new(&[files]).unwrap(), pem)
    }

    /// Runs one server handshake of `tls`, bounded by `within`, against `client` on a loopback
    /// connection; what the server's side came to.
    async fn one_handshake<F, Fut>(
        tls: &TlsTerminator,
        within: Duration,
        client: F,
    ) -> Result<Protocol, HandshakeError>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client =
            tokio::spawn(async move { client(TcpStream::connect(addr).await.unwrap()).await });
        let (stream, _) = listener.accept().await.unwrap();
        let result = tls.handshake(stream, within).await.map(|(_, p)| p);
        client.await.unwrap();
        result
    }

    /// A rustls client that trusts `root` and offers `alpn`, handshaking for `a.example`.
    fn rustls_client(
        root: &PemPair,
        alpn: &[&[u8]],
    ) -> impl FnOnce(TcpStream) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&root.cert) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        move |stream| {
            Box::pin(async move {
                let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
                // Whatever the client makes of it: the server's side is what is tested.
                let _ = connector.connect(name, stream).await;
            })
        }
    }

    #[tokio::test]
    async fn failed_handshakes_are_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (tls, pem) = terminator(dir.path());
        let within = Duration::from_secs(5);
        let counts = |tls: &TlsTerminator| HandshakeFailure::ALL.map(|r| tls.failures().get(r));

        // A client that trusts the certificate: done, and nothing counted.
        let protocol = one_handshake(&tls, within, rustls_client(&pem, &[b"h2"]))
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(counts(&tls), [0; 5]);

        // Connects and goes.
        let e = one_handshake(&tls, within, |s| async move { drop(s) })
            .await
            .unwrap_err();
        assert_eq!(e.reason(), HandshakeFailure::Eof, "{e}");

        // Plain HTTP sent to the TLS port.
        let e = one_handshake(&tls, within, |mut s| async move {
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
                .await;
            let _ = s.read_to_end(&mut Vec::new()).await;
        })
        .await
        .unwrap_err();
        assert_eq!(e.reason(), HandshakeFailure::Protocol, "{e}");

        // A client that does not trust the certificate says so with an alert.
        let stranger = testing_pair(&["a.example"]);
        let e = one_handshake(&tls, within, rustls_client(&stranger, &[]))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), HandshakeFailure::Alert, "{e}");

        // Only ALPN protocols graygate does not speak.
        let e = one_handshake(&tls, within, rustls_client(&pem, &[b"imap"]))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), HandshakeFailure::Incompatible, "{e}");

        // Sends nothing until the time is up.
        let e = one_handshake(&tls, Duration::from_millis(50), |s| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(s);
        })
        .await
        .unwrap_err();
        assert_eq!(e.reason(), HandshakeFailure::Timeout, "{e}");

        // timeout, eof, alert, incompatible, protocol.
        assert_eq!(counts(&tls), [1, 1, 1, 1, 1]);
        // Every listener's clone counts into the same counters.
        let other = tls.clone();
        let _ = one_handshake(&other, within, |s| async move { drop(s) }).await;
        assert_eq!(tls.failures().get(HandshakeFailure::Eof), 2);
    }
}
