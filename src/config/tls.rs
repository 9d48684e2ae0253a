//! The `[tls]` table: the TLS listeners and their certificates.
//!
//! ```toml
//! [tls]
//! listen = ["0.0.0.0:443"]
//! certs = [
//!   { cert = "site.pem", key = "site.key" },    # the first is the default
//!   { cert = "other.pem", key = "other.key" },  # chosen by SNI from its DNS names
//! ]
//! redirect_http = false     # true: the plain listeners answer 308 to https://
//! watch_interval = "2s"     # how often the files are checked for changes
//! ```
//!
//! Every certificate and key is read and checked here (parse, expiry, the key is the
//! certificate's), so that `graygate check` reports a missing, mismatched or expired one with its
//! file, as a start would.

use super::file::TlsFile;
use super::ConfigError;
use crate::proxy::tls::{self, CertFiles};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Default of `[tls] watch_interval`: how often the certificate and key files are read to see
/// whether they changed.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The validated `[tls]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Addresses of the TLS listeners.
    pub listen: Vec<SocketAddr>,
    /// Certificate and key files, resolved against the config's directory; the first is the
    /// default.
    pub certs: Vec<CertFiles>,
    /// The plain listeners answer every request with a 308 to HTTPS instead of proxying it.
    pub redirect_http: bool,
    /// How often the files are read to see whether they changed.
    pub watch_interval: Duration,
}

/// Reads a duration field (`field`, its text if set, its default).
pub(super) type DurationField<'a> =
    dyn Fn(&str, &Option<String>, Duration) -> Result<Duration, ConfigError> + 'a;

/// Validates `[tls]`. `plain` is the plain listeners' addresses, which a TLS listener must not
/// take; `duration` reads a duration field.
pub(super) fn tls_config(
    file: &TlsFile,
    plain: &[SocketAddr],
    base: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
    duration: &DurationField<'_>,
) -> Result<TlsConfig, ConfigError> {
    if file.listen.is_empty() {
        return Err(at(
            "tls.listen",
            "needs at least one address, like \"0.0.0.0:443\"".into(),
        ));
    }
    let mut listen = Vec::new();
    for (i, text) in file.listen.iter().enumerate() {
        let field = format!("tls.listen[{i}]");
        let addr = super::address(&field, text, 443, at)?;
        if addr.port() != 0 && plain.contains(&addr) {
            return Err(at(
                &field,
                format!("{addr} is also in `listen`: a port serves plain HTTP or TLS, not both"),
            ));
        }
        listen.push(addr);
    }

    if file.certs.is_empty() {
        return Err(at(
            "tls.certs",
            "needs at least one certificate, like [{ cert = \"site.pem\", key = \"site.key\" }]"
                .into(),
        ));
    }
    let certs: Vec<CertFiles> = file
        .certs
        .iter()
        .map(|c| CertFiles {
            cert: base.join(&c.cert),
            key: base.join(&c.key),
        })
        .collect();
    if let Err((i, e)) = tls::check_certs(&certs) {
        return Err(at(
            &format!("tls.certs[{i}].{}", e.which().field()),
            e.to_string(),
        ));
    }

    if file.redirect_http && plain.is_empty() {
        return Err(at(
            "tls.redirect_http",
            "there is no plain listener (`listen`) to redirect from".into(),
        ));
    }
    let watch_interval = duration(
        "tls.watch_interval",
        &file.watch_interval,
        DEFAULT_WATCH_INTERVAL,
    )?;
    Ok(TlsConfig {
        listen,
        certs,
        redirect_http: file.redirect_http,
        watch_interval,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::path::Path;

    /// Writes a certificate for `names` valid until January 1st of `until` as `<name>.pem` and
    /// `<name>.key` in `dir`.
    fn write_cert(dir: &Path, name: &str, names: &[&str], until: i32) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn config(dir: &Path, text: &str) -> Result<crate::config::Config, String> {
        parse(text, &dir.join("g.toml"))
            .map_err(|e| e.to_string().replace(&format!("{}/", dir.display()), ""))
    }

    #[test]
    fn reads_listeners_certificates_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "site", &["a.example"], 2999);
        write_cert(dir.path(), "other", &["b.example"], 2999);
        let c = config(
            dir.path(),
            "listen = []\n[tls]\nlisten = [\"127.0.0.1:8443\"]\n\
             certs = [{ cert = \"site.pem\", key = \"site.key\" }, { cert = \"other.pem\", key = \"other.key\" }]\n",
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert!(c.listen.is_empty());
        assert_eq!(tls.listen, vec!["127.0.0.1:8443".parse().unwrap()]);
        assert_eq!(tls.certs[1].key, dir.path().join("other.key"));
        assert!(!tls.redirect_http);
        assert_eq!(tls.watch_interval, super::DEFAULT_WATCH_INTERVAL);
    }

    #[test]
    fn every_mistake_names_its_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "site", &["a.example"], 2999);
        write_cert(dir.path(), "other", &["b.example"], 2999);
        write_cert(dir.path(), "old", &["a.example"], 2021);
        write_cert(dir.path(), "ip", &["127.0.0.1"], 2999);
        let tls = |rest: &str| {
            format!("listen = [\"127.0.0.1:8080\"]\n[tls]\nlisten = [\"127.0.0.1:8443\"]\n{rest}")
        };
        let cases = [
            ("listen = []\n".to_string(), "g.toml:1:1: listen: needs at least one address"),
            (
                "listen = [\"127.0.0.1:8080\"]\n[tls]\nlisten = []\ncerts = [{ cert = \"site.pem\", key = \"site.key\" }]\n".into(),
                "g.toml:3:1: tls.listen: needs at least one address, like \"0.0.0.0:443\"",
            ),
            (
                "listen = [\"127.0.0.1:8080\"]\n[tls]\nlisten = [\"127.0.0.1:8080\"]\ncerts = [{ cert = \"site.pem\", key = \"site.key\" }]\n".into(),
                "g.toml:3:11: tls.listen[0]: 127.0.0.1:8080 is also in `listen`: a port serves plain HTTP or TLS, not both",
            ),
            (tls("certs = []\n"), "g.toml:4:1: tls.certs: needs at least one certificate"),
            (
                tls("certs = [{ cert = \"missing.pem\", key = \"site.key\" }]\n"),
                "g.toml:4:12: tls.certs[0].cert: missing.pem: cannot read: No such file or directory (os error 2)",
            ),
            (
                tls("certs = [{ cert = \"site.pem\", key = \"missing.key\" }]\n"),
                "g.toml:4:31: tls.certs[0].key: missing.key: cannot read: No such file or directory (os error 2)",
            ),
            (
                tls("certs = [{ cert = \"site.pem\", key = \"site.key\" }, { cert = \"other.pem\", key = \"site.key\" }]\n"),
                "g.toml:4:73: tls.certs[1].key: site.key: the key does not match the certificate other.pem",
            ),
            (
                tls("certs = [{ cert = \"old.pem\", key = \"old.key\" }]\n"),
                "g.toml:4:12: tls.certs[0].cert: old.pem: the certificate expired on 2021-01-01T00:00:00Z",
            ),
            (
                tls("certs = [{ cert = \"site.pem\", key = \"site.key\" }, { cert = \"ip.pem\", key = \"ip.key\" }]\n"),
                "g.toml:4:53: tls.certs[1].cert: ip.pem: the certificate names no DNS name",
            ),
            (
                tls("certs = [{ cert = \"site.pem\", key = \"site.key\" }]\nwatch_interval = \"0s\"\n"),
                "g.toml:5:1: tls.watch_interval: must be longer than zero",
            ),
            (
                "listen = []\n[tls]\nlisten = [\"127.0.0.1:8443\"]\ncerts = [{ cert = \"site.pem\", key = \"site.key\" }]\nredirect_http = true\n".into(),
                "g.toml:5:1: tls.redirect_http: there is no plain listener (`listen`) to redirect from",
            ),
        ];
        let mut failures = Vec::new();
        for (text, want) in cases {
            let got = config(dir.path(), &text).expect_err(&text);
            if !got.starts_with(want) {
                failures.push(format!("config:\n{text}\nwant: {want}\ngot:  {got}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}
