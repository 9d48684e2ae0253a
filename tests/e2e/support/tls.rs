//! Certificates made in the test (a CA of its own and leaves signed by it, with rcgen) written
//! into the test's directory, and a rustls client that trusts that CA.
//!
//! ```ignore
//! let ca = TestCa::new();
//! ca.leaf("app", &["app.test"]).write(dir, "site");   // site.pem, site.key
//! let gg = gateway().tls(&["site"]).start_in(dir).await;
//! let stream = connect_with(ca.client_config(&[b"h2"]), gg.tls_addr(), "app.test").await;
//! ```

use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate authority of the test's own: the leaves it signs are trusted by its clients
/// (and by curl and openssl given [`TestCa::write_ca`]).
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) {
        std::fs::write(dir.join(format!("{stem}.pem")), &self.cert).expect("write a cert");
        std::fs::write(dir.join(format!("{stem}.key")), &self.key).expect("write a key");
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "graygate test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a CA certificate");
        TestCa {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses) with common name `cn`, valid now.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        self.leaf_until(cn, names, 2999)
    }

    /// A leaf whose validity ended on January 1st of `year` (an expired one for a year past).
    pub fn leaf_until(&self, cn: &str, names: &[&str], year: i32) -> Leaf {
        self.leaf_until_date(cn, names, (year, 1, 1))
    }

    /// A leaf that ends at the midnight (UTC) `days` days from today; and that end, in seconds
    /// since the Unix epoch.
    pub fn leaf_ending_in(&self, cn: &str, names: &[&str], days: u64) -> (Leaf, u64) {
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            / 86_400;
        let end = today + days;
        (
            self.leaf_until_date(cn, names, civil_date(end)),
            end * 86_400,
        )
    }

    /// A leaf valid from 2020 until the midnight (UTC) that starts `(year, month, day)`.
    fn leaf_until_date(&self, cn: &str, names: &[&str], (year, month, day): (i32, u8, u8)) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("valid names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate as `ca.pem` into `dir` (for `curl --cacert`); its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).expect("write the CA");
        path
    }

    /// A rustls client config that trusts this CA and offers `alpn`, without session
    /// resumption.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.der().to_vec()))
            .expect("the CA is a valid root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection a full handshake: a resumed session shows the certificate of the
        // session it resumes, not the one in force.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// A TLS connection with a client config made once (a load loop's).
pub async fn connect_with(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The common name of the certificate the server presented on `stream`.
pub fn served_cn(stream: &TlsStream<TcpStream>) -> String {
    let (_, conn) = stream.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server sent a certificate");
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).expect("an X.509 certificate");
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    cn
}

/// The calendar date (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days after the epoch).
fn civil_date(days: u64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (
        i32::try_from(year).expect("a year"),
        u8::try_from(month).expect("a month"),
        u8::try_from(day).expect("a day"),
    )
}

#[test]
fn civil_dates() {
    assert_eq!(civil_date(0), (1970, 1, 1));
    assert_eq!(civil_date(59), (1970, 3, 1));
    assert_eq!(civil_date(11_016), (2000, 2, 29));
    assert_eq!(civil_date(20_454), (2026, 1, 1));
}
