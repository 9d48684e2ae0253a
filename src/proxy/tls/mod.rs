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
//! - `live`: the set in force, reloaded on SIGHUP and when the files change.
//! - `redirect`: `redirect_http`, plain requests answered with a 308 to HTTPS.

mod certs;
mod live;
mod redirect;
mod sni;

pub use certs::{CertError, CertFiles, LoadedCert, PemPair, Which};
pub use live::{CertsReloaded, LiveCerts};
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

/// The crypto graygate's TLS runs on: rustls' ring provider (no OpenSSL).
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
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

/// What terminates TLS on the `[tls]` listeners: the rustls server config (shared by all of
/// them) and the certificates in force.
#[derive(Clone)]
pub struct TlsTerminator {
    acceptor: tokio_rustls::TlsAcceptor,
    certs: Arc<LiveCerts>,
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
        })
    }

    /// The certificates in force, for reloads.
    pub fn certs(&self) -> &Arc<LiveCerts> {
        &self.certs
    }

    /// Runs the server side of the handshake, at most `within`; the stream and the protocol
    /// the client chose.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        within: Duration,
    ) -> Result<(TlsStream<TcpStream>, Protocol), HandshakeError> {
        let stream = tokio::time::timeout(within, self.acceptor.accept(stream))
            .await
            .map_err(|_| HandshakeError::TimedOut(within))??;
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
