//! TLS toward upstream servers: what an upstream's `tls`, `ca`, `sni`, `client_cert` and
//! `client_key` settings become, and the handshake on every new upstream connection.
//!
//! - **Verification.** Against the upstream's own CA file (`ca`), or else the system's trust
//!   store, read with `rustls-native-certs`: the roots that curl and the operating system trust,
//!   kept current by the OS (`ca-certificates`) rather than by rebuilding graygate, including an
//!   internal CA an operator installed there; `SSL_CERT_FILE` and `SSL_CERT_DIR` point it
//!   elsewhere, as they do for OpenSSL. A compiled-in bundle (`webpki-roots`) would ignore all
//!   of that.
//! - **SNI.** The server's host name as written (`https://api.internal:8443` sends
//!   `api.internal`), or the upstream's `sni` for every server. A server written as an IP address
//!   sends no SNI (RFC 6066 allows no IP literals there) and its certificate must name that IP,
//!   unless `sni` gives a name to send and verify instead.
//! - **ALPN.** `h2` for an HTTP/2 upstream, `http/1.1` otherwise; a server that does not agree to
//!   `h2` fails the connect, since it could not understand what would follow.
//! - **Client certificate** (mTLS to the upstream): `client_cert` (the chain) and `client_key`.
//! - **Found when the config is read.** The rustls client config is built once per upstream from
//!   the files' contents, when the config is read: `graygate check` reports a missing file, a file
//!   without a certificate, or a key that does not belong to its certificate, with the field. A
//!   reload that finds other contents in the same files builds a new connector (and new pools).
//! - **A failed handshake is a failed connect** (unknown CA, wrong name, client certificate
//!   refused): the server is marked down (logged once), the next server is tried, and a canary
//!   falls back to stable, exactly as for a refused TCP connect.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A PEM file as read from disk: its name, for messages, and its contents. Two are equal when
/// both are: a reload that finds new contents under the same name rebuilds the connector.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The bytes as read (PEM text).
    pub contents: Vec<u8>,
}

impl PemFile {
    /// Reads `path`.
    pub fn read(path: PathBuf) -> io::Result<PemFile> {
        let contents = std::fs::read(&path)?;
        Ok(PemFile { path, contents })
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

impl std::fmt::Debug for PemFile {
    /// The name only: a key's contents never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.path)
    }
}

/// The TLS settings of one upstream, files already read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The CA certificates that sign the servers' certificates; `None`: the system roots.
    pub ca: Option<PemFile>,
    /// The name sent as SNI and verified in the certificate, for every server of the upstream;
    /// `None`: each server's own host.
    pub sni: Option<String>,
    /// The client certificate chain presented to the servers (with `client_key`).
    pub client_cert: Option<PemFile>,
    /// The client certificate's private key.
    pub client_key: Option<PemFile>,
}

/// A TLS setting of an upstream that cannot be used. [`TlsError::field`] names the upstream's
/// field it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    /// The CA file or the client certificate file holds no certificate.
    #[error("no certificate in {file} (expected PEM `-----BEGIN CERTIFICATE-----`)")]
    NoCertificate { field: &'static str, file: String },
    /// A certificate that does not parse, or that rustls refuses as a root.
    #[error("{file}: {message}")]
    BadCertificate {
        field: &'static str,
        file: String,
        message: String,
    },
    /// The key file holds no private key.
    #[error("no private key in {file} (expected PEM `-----BEGIN PRIVATE KEY-----`)")]
    NoKey { file: String },
    /// One of `client_cert` and `client_key` without the other.
    #[error("`client_cert` and `client_key` go together: give both")]
    HalfIdentity { field: &'static str },
    /// A key that does not fit its certificate, or that rustls cannot sign with.
    #[error("{key} is not the key of {cert}: {message}")]
    BadIdentity {
        cert: String,
        key: String,
        message: String,
    },
    /// An `sni` that is neither a DNS name nor an IP address.
    #[error("`{sni}` is not a DNS name or an IP address")]
    BadSni { sni: String },
    /// A server whose host cannot be verified as a TLS name (and no `sni` names it).
    #[error("`{addr}`: `{host}` is not a DNS name or an IP address TLS can verify (set `sni`)")]
    BadServerName { addr: String, host: String },
    /// No `ca`, and the system trust store has no usable certificate.
    #[error("no system root certificates found{detail}: install ca-certificates, point SSL_CERT_FILE at a bundle, or give the upstream a `ca`")]
    NoSystemRoots { detail: String },
    /// rustls refused the protocol versions (cannot happen with its defaults).
    #[error("TLS setup: {message}")]
    Setup { message: String },
}

impl TlsError {
    /// The upstream field the mistake is in: `ca`, `sni`, `client_cert`, `client_key`,
    /// `servers`, or `tls` for the system roots.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::NoCertificate { field, .. }
            | TlsError::BadCertificate { field, .. }
            | TlsError::HalfIdentity { field } => field,
            TlsError::NoKey { .. } | TlsError::BadIdentity { .. } => "client_key",
            TlsError::BadSni { .. } => "sni",
            TlsError::BadServerName { .. } => "servers",
            TlsError::NoSystemRoots { .. } | TlsError::Setup { .. } => "tls",
        }
    }
}

/// The TLS client side of one upstream, built once from its [`TlsOptions`].
pub struct UpstreamTls {
    /// What it was built from: two are equal when these are.
    options: TlsOptions,
    /// `sni` parsed; `None`: each server's host.
    sni: Option<ServerName<'static>>,
    /// The rustls client config (roots, client certificate, ALPN) behind a connector.
    connector: TlsConnector,
    /// True when ALPN asks for `h2` and the server must agree.
    h2: bool,
}

impl UpstreamTls {
    /// Builds the client side: roots from `ca` (or the system), the client certificate, and
    /// ALPN `h2` when `h2` is true, `http/1.1` otherwise.
    pub fn new(options: TlsOptions, h2: bool) -> Result<UpstreamTls, TlsError> {
        let sni = options
            .sni
            .as_deref()
            .map(|sni| {
                ServerName::try_from(sni.to_string()).map_err(|_| TlsError::BadSni {
                    sni: sni.to_string(),
                })
            })
            .transpose()?;
        let roots = match &options.ca {
            Some(ca) => ca_roots(ca)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup {
                message: e.to_string(),
            })?
            .with_root_certificates(roots);
        let mut config = match (&options.client_cert, &options.client_key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "client_cert")?;
                let private = PrivateKeyDer::from_pem_slice(&key.contents)
                    .map_err(|_| TlsError::NoKey { file: key.name() })?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    TlsError::BadIdentity {
                        cert: cert.name(),
                        key: key.name(),
                        message: e.to_string(),
                    }
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(TlsError::HalfIdentity {
                    field: "client_key",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::HalfIdentity {
                    field: "client_cert",
                })
            }
        };
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(UpstreamTls {
            options,
            sni,
            connector: TlsConnector::from(Arc::new(config)),
            h2,
        })
    }

    /// What it was built from.
    pub fn options(&self) -> &TlsOptions {
        &self.options
    }

    /// The name a server at `addr` (`host:port`) is sent as SNI and verified against: `sni` if
    /// set, else the host.
    pub fn server_name(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        if let Some(sni) = &self.sni {
            return Ok(sni.clone());
        }
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ServerName::try_from(host.to_string()).map_err(|_| TlsError::BadServerName {
            addr: addr.to_string(),
            host: host.to_string(),
        })
    }

    /// The TLS handshake on a new connection to a server named `name`; for an HTTP/2 upstream,
    /// also checks that the server agreed to `h2`.
    pub async fn handshake(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        let stream = self.connector.connect(name, tcp).await?;
        if self.h2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::other(
                "the server did not agree to HTTP/2 (ALPN h2)",
            ));
        }
        Ok(stream)
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.options == other.options && self.h2 == other.h2
    }
}

impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("options", &self.options)
            .field("h2", &self.h2)
            .finish()
    }
}

/// Every certificate in `pem`, at least one.
fn certificates(
    pem: &PemFile,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&pem.contents)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            field,
            file: pem.name(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            file: pem.name(),
        });
    }
    Ok(certs)
}

/// The roots of a `ca` file: every certificate in it.
fn ca_roots(ca: &PemFile) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, "ca")? {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            field: "ca",
            file: ca.name(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The system's trust store (read again on every config load, so that a reload sees roots the
/// OS added). Certificates rustls cannot use are skipped, as every TLS client does.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _skipped) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots {
            detail: found
                .errors
                .first()
                .map_or(String::new(), |e| format!(" ({e})")),
        });
    }
    Ok(roots)
}

/// A connection to an upstream server: plain TCP, or TLS over it. An enum rather than a boxed
/// trait object, so that the plain path costs one match per read or write.
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names` and its key, as PEM.
    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(name: &str, text: &str) -> PemFile {
        PemFile {
            path: PathBuf::from(name),
            contents: text.as_bytes().to_vec(),
        }
    }

    fn options(ca: &str) -> TlsOptions {
        TlsOptions {
            ca: Some(pem("ca.pem", ca)),
            ..TlsOptions::default()
        }
    }

    #[test]
    fn the_name_is_the_host_unless_sni_says_otherwise() {
        let (ca, _) = self_signed(&["ca.test"]);
        let tls = UpstreamTls::new(options(&ca), false).unwrap();
        let name = |addr: &str| tls.server_name(addr).map(|n| n.to_str().into_owned());
        assert_eq!(name("api.internal:8443"), Ok("api.internal".into()));
        assert_eq!(name("127.0.0.1:443"), Ok("127.0.0.1".into()));
        assert_eq!(name("[::1]:443"), Ok("::1".into()));
        assert!(matches!(
            tls.server_name("127.0.0.1:443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert_eq!(
            name("bad_host!:1").unwrap_err().to_string(),
            "`bad_host!:1`: `bad_host!` is not a DNS name or an IP address TLS can verify (set `sni`)"
        );

        let named = UpstreamTls::new(
            TlsOptions {
                sni: Some("stable.test".into()),
                ..options(&ca)
            },
            false,
        )
        .unwrap();
        assert_eq!(
            named.server_name("127.0.0.1:1").unwrap().to_str(),
            "stable.test"
        );
        let e = UpstreamTls::new(
            TlsOptions {
                sni: Some("not a name".into()),
                ..options(&ca)
            },
            false,
        )
        .unwrap_err();
        assert_eq!(
            (e.field(), e.to_string()),
            (
                "sni",
                "`not a name` is not a DNS name or an IP address".into()
            )
        );
    }

    #[test]
    fn files_that_cannot_be_used_name_their_field() {
        let (ca, ca_key) = self_signed(&["ca.test"]);
        let (client, client_key) = self_signed(&["client.test"]);
        let error = |options: TlsOptions| {
            let e = UpstreamTls::new(options, false).unwrap_err();
            (e.field(), e.to_string())
        };
        assert_eq!(
            error(options("junk")),
            (
                "ca",
                "no certificate in ca.pem (expected PEM `-----BEGIN CERTIFICATE-----`)".into()
            )
        );
        assert_eq!(
            error(TlsOptions {
                client_cert: Some(pem("c.pem", &client)),
                ..options(&ca)
            }),
            (
                "client_key",
                "`client_cert` and `client_key` go together: give both".into()
            )
        );
        assert_eq!(
            error(TlsOptions {
                client_key: Some(pem("c.key", &client_key)),
                ..options(&ca)
            })
            .0,
            "client_cert"
        );
        assert_eq!(
            error(TlsOptions {
                client_cert: Some(pem("c.pem", &client)),
                client_key: Some(pem("c.key", &client)),
                ..options(&ca)
            }),
            (
                "client_key",
                "no private key in c.key (expected PEM `-----BEGIN PRIVATE KEY-----`)".into()
            )
        );
        let (field, message) = error(TlsOptions {
            client_cert: Some(pem("c.pem", &client)),
            client_key: Some(pem("ca.key", &ca_key)),
            ..options(&ca)
        });
        assert_eq!(field, "client_key");
        assert!(
            message.starts_with("ca.key is not the key of c.pem: "),
            "{message}"
        );
        assert!(UpstreamTls::new(
            TlsOptions {
                client_cert: Some(pem("c.pem", &client)),
                client_key: Some(pem("c.key", &client_key)),
                ..options(&ca)
            },
            true,
        )
        .is_ok());
    }

    #[test]
    fn equal_when_built_from_the_same_files_and_protocol() {
        let (ca, _) = self_signed(&["ca.test"]);
        let (other, _) = self_signed(&["other.test"]);
        let a = UpstreamTls::new(options(&ca), false).unwrap();
        assert_eq!(a, UpstreamTls::new(options(&ca), false).unwrap());
        assert_ne!(a, UpstreamTls::new(options(&ca), true).unwrap());
        assert_ne!(a, UpstreamTls::new(options(&other), false).unwrap());
        assert!(!format!("{a:?}").contains("BEGIN"), "no PEM in logs: {a:?}");
    }
}
