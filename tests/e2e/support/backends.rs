//! Backends graygate reaches over TLS or HTTP/2, and the throwaway PKI they use.
//!
//! - [`Pki`]: a test CA, a server certificate for `localhost`, `stable.test`, `127.0.0.1` and
//!   `::1`, a client CA with a client certificate, and an unrelated CA, as PEM files in a
//!   temporary directory (made with rcgen).
//! - [`tls_backend`]: HTTP/1.1 or HTTP/2 (by ALPN) over TLS, optionally requiring a client
//!   certificate; [`h2c_backend`]: HTTP/2 with prior knowledge over plain TCP.
//!
//! Each answers `<name>\n` and tells what it saw, as the demo backend does with `echo-<header>`
//! for every request header, plus `x-sni`, `x-alpn`, `x-client-cert` (the client certificate's
//! common name, or `-`), `x-http-version` and `x-authority` (the URI's authority: `:authority`
//! in HTTP/2). `GET /trailers` answers with the trailer `x-checksum: 42` after its body (and no
//! length); `GET /length` with a `Content-Length`. Every backend stops when dropped.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

/// PEM files of a test PKI in a temporary directory (removed on drop).
pub struct Pki {
    dir: tempfile::TempDir,
}

/// A CA: its certificate's PEM and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a CA certificate");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate for `names` (DNS names or IP addresses) signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate names");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().expect("a key");
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// A fresh PKI: `ca.pem`; `server.pem`/`server.key` (signed by it, for `localhost`,
    /// `stable.test`, `127.0.0.1`, `::1`); `client-ca.pem` and `client.pem`/`client.key` (common
    /// name `graygate-client`); `other-ca.pem`, which signed nothing here.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("graygate-pki")
            .tempdir()
            .expect("a temp dir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write a PEM file")
        };
        let server_ca = ca("graygate test CA");
        let (cert, key) = leaf(
            &server_ca,
            &["localhost", "stable.test", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("ca.pem", &server_ca.pem);
        write("server.pem", &cert);
        write("server.key", &key);
        let client_ca = ca("graygate test client CA");
        let (cert, key) = leaf(
            &client_ca,
            &["graygate-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("client-ca.pem", &client_ca.pem);
        write("client.pem", &cert);
        write("client.key", &key);
        write("other-ca.pem", &ca("some other CA").pem);
        Pki { dir }
    }

    /// The path of one of its files (`"ca.pem"`), as a string for a config.
    pub fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// What a backend saw of a connection.
#[derive(Debug, Clone, Default)]
struct Seen {
    sni: Option<String>,
    alpn: Option<String>,
    client_cert: Option<String>,
}

/// A running backend; stops when dropped.
pub struct TlsBackend {
    addr: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS backend being set up; see [`tls_backend`].
pub struct TlsBackendBuilder<'a> {
    name: String,
    pki: &'a Pki,
    require_client_cert: bool,
    h2_only: bool,
}

/// A TLS backend answering as `name` with the PKI's server certificate, ALPN `h2` and
/// `http/1.1`.
pub fn tls_backend<'a>(name: &str, pki: &'a Pki) -> TlsBackendBuilder<'a> {
    TlsBackendBuilder {
        name: name.into(),
        pki,
        require_client_cert: false,
        h2_only: false,
    }
}

impl TlsBackendBuilder<'_> {
    /// Refuses clients without a certificate from the PKI's client CA.
    pub fn require_client_cert(mut self) -> Self {
        self.require_client_cert = true;
        self
    }

    /// Offers ALPN `h2` only.
    pub fn h2_only(mut self) -> Self {
        self.h2_only = true;
        self
    }

    /// Binds 127.0.0.1 port 0 and serves.
    pub async fn start(self) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = if self.require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(&self.pki.file("client-ca.pem")) {
                roots.add(cert).expect("a client CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_file(self.pki.file("server.key")).expect("the key");
        let mut config = builder
            .with_single_cert(certs(&self.pki.file("server.pem")), key)
            .expect("a server config");
        config.alpn_protocols = if self.h2_only {
            vec![b"h2".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let name: Arc<str> = Arc::from(self.name.as_str());
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (config, name) = (config.clone(), name.clone());
                tokio::spawn(async move {
                    let acceptor =
                        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                    let Ok(start) = acceptor.await else { return };
                    let sni = start.client_hello().server_name().map(str::to_string);
                    let Ok(stream) = start.into_stream(config).await else {
                        return;
                    };
                    let session = stream.get_ref().1;
                    let seen = Seen {
                        sni,
                        alpn: session
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_cert: session
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(common_name),
                    };
                    let h2 = seen.alpn.as_deref() == Some("h2");
                    serve(TokioIo::new(stream), name, seen, h2).await;
                });
            }
        });
        TlsBackend {
            addr,
            connections,
            task,
        }
    }
}

/// An h2c backend (HTTP/2 with prior knowledge, plain TCP) answering as `name`.
pub async fn h2c_backend(name: &str) -> TlsBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let name: Arc<str> = Arc::from(name);
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(
                TokioIo::new(tcp),
                name.clone(),
                Seen::default(),
                true,
            ));
        }
    });
    TlsBackend {
        addr,
        connections,
        task,
    }
}

async fn serve<I>(io: I, name: Arc<str>, seen: Seen, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let response = answer(&name, &seen, req);
        async move { Ok::<_, Infallible>(response) }
    });
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn answer(name: &str, seen: &Seen, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
    let text = Bytes::from(format!("{name}\n"));
    let body: Body = match req.uri().path() {
        "/trailers" => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("42"));
            let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                vec![Ok(Frame::data(text)), Ok(Frame::trailers(trailers))];
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
        _ => Full::new(text).boxed(),
    };
    let mut response = hyper::Response::new(body);
    let headers = response.headers_mut();
    for (header, value) in req.headers() {
        if let Ok(echo) = HeaderName::from_bytes(format!("echo-{header}").as_bytes()) {
            headers.append(echo, value.clone());
        }
    }
    let mut fact = |name: &'static str, value: Option<&str>| {
        let value = HeaderValue::from_str(value.unwrap_or("-")).expect("a header value");
        headers.insert(name, value);
    };
    fact("x-sni", seen.sni.as_deref());
    fact("x-alpn", seen.alpn.as_deref());
    fact("x-client-cert", seen.client_cert.as_deref());
    fact("x-http-version", Some(&format!("{:?}", req.version())));
    fact("x-authority", req.uri().authority().map(|a| a.as_str()));
    if req.uri().path() == "/length" {
        headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(name.len() + 1),
        );
    }
    response
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("a PEM file")
        .collect::<Result<_, _>>()
        .expect("certificates")
}

/// The common name of a DER certificate (the test PKI's client certificate has one).
fn common_name(cert: &CertificateDer<'_>) -> String {
    // rcgen writes the common name as a UTF8String; find it after the commonName OID
    // (2.5.4.3) rather than pulling in an X.509 parser.
    const OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let der = cert.as_ref();
    der.windows(OID.len())
        .rposition(|w| w == OID)
        .and_then(|at| {
            let rest = &der[at + OID.len()..];
            let len = usize::from(*rest.get(1)?);
            rest.get(2..2 + len)
        })
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .unwrap_or_else(|| "?".into())
}

/// An HTTP/2 client with prior knowledge (h2c) on a new connection to `addr`.
pub async fn h2c_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}
