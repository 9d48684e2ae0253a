//! A certificate and its key, read from PEM files and checked before they are served: the
//! certificate chain parses, the certificate has not expired, the key parses, and the key is the
//! certificate's. Each error names the file and what is wrong with it, so that `graygate check`,
//! a failed start and a refused reload all say the same.
//!
//! The names a certificate is chosen for (its DNS `subjectAltName`s) and its expiry are read with
//! `x509-parser`; the key is loaded by rustls' ring provider, which also compares it with the
//! certificate's public key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// One `[tls] certs` entry: a certificate chain (the server's certificate first) and its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    /// PEM file with the certificate, then its intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Which file of a [`CertFiles`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

impl Which {
    /// The key of the `certs` entry that names the file: `cert` or `key`.
    pub fn field(self) -> &'static str {
        match self {
            Which::Cert => "cert",
            Which::Key => "key",
        }
    }
}

/// A certificate or key that cannot be served, and why. The message starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file cannot be read (missing, no permission).
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        file: PathBuf,
        which: Which,
        #[source]
        source: std::io::Error,
    },
    /// Not a usable certificate file.
    #[error("{}: {what}", .file.display())]
    Certificate { file: PathBuf, what: String },
    /// Not a usable key file.
    #[error("{}: {what}", .file.display())]
    Key { file: PathBuf, what: String },
    /// The key is not the certificate's.
    #[error("{}: the key does not match the certificate {}", .key.display(), .cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    /// The certificate's validity ended.
    #[error("{}: the certificate expired on {not_after}", .file.display())]
    Expired { file: PathBuf, not_after: String },
    /// A certificate after the first names no DNS name, so no client could ever get it.
    #[error(
        "{}: the certificate names no DNS name (subjectAltName), so SNI can never choose it; \
         only the first certificate (the default) may",
        .file.display()
    )]
    NoNames { file: PathBuf },
}

impl CertError {
    /// Which file of its entry the error is about.
    pub fn which(&self) -> Which {
        match self {
            CertError::Read { which, .. } => *which,
            CertError::Key { .. } | CertError::Mismatch { .. } => Which::Key,
            CertError::Certificate { .. }
            | CertError::Expired { .. }
            | CertError::NoNames { .. } => Which::Cert,
        }
    }
}

/// A certificate ready to serve, with what SNI chooses it by.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// The files it came from.
    pub files: CertFiles,
    /// The chain and the signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// Its DNS `subjectAltName`s, lowercase, without a trailing dot (`*.example.com` included).
    pub names: Vec<String>,
    /// The end of its validity.
    pub not_after: SystemTime,
}

/// The contents of both files of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Reads both files of an entry (blocking: at start and in `graygate check`).
pub fn read(files: &CertFiles) -> Result<PemPair, CertError> {
    let read = |file: &Path, which| {
        std::fs::read(file).map_err(|source| CertError::Read {
            file: file.to_path_buf(),
            which,
            source,
        })
    };
    Ok(PemPair {
        cert: read(&files.cert, Which::Cert)?,
        key: read(&files.key, Which::Key)?,
    })
}

/// Reads both files of an entry without blocking the runtime (reloads).
pub async fn read_async(files: &CertFiles) -> Result<PemPair, CertError> {
    let owned = files.clone();
    tokio::task::spawn_blocking(move || read(&owned))
        .await
        .unwrap_or_else(|e| {
            Err(CertError::Certificate {
                file: files.cert.clone(),
                what: format!("reading the files failed: {e}"),
            })
        })
}

/// Checks an entry's contents and makes it servable; `now` decides what has expired.
pub fn load(
    files: &CertFiles,
    pem: &PemPair,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let cert_error = |what: String| CertError::Certificate {
        file: files.cert.clone(),
        what,
    };
    let key_error = |what: String| CertError::Key {
        file: files.key.clone(),
        what,
    };

    let chain = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate file: {e}")))?;
    let Some(end_entity) = chain.first() else {
        return Err(cert_error(
            "holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
        ));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(end_entity)
        .map_err(|e| cert_error(format!("not a valid X.509 certificate: {e}")))?;
    let not_after = time_of(parsed.validity().not_after.timestamp());
    if not_after < now {
        return Err(CertError::Expired {
            file: files.cert.clone(),
            not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
        });
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                if !dns.is_empty() && !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }

    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            key_error("holds no private key (no PKCS#8, PKCS#1 or SEC1 PEM block)".into())
        }
        e => key_error(format!("not a PEM private key file: {e}")),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(format!("the private key cannot be used: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        // The provider cannot tell the key's public half: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(cert_error(format!("not a usable certificate: {e}"))),
    }
    Ok(LoadedCert {
        files: files.clone(),
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// Seconds since the epoch as a time (before the epoch: the epoch).
fn time_of(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Certificates made for the tests, with rcgen.

    use super::*;

    /// A self-signed certificate for `names` (CN = the first name), valid from 2020 until
    /// `not_after_year` (January 1st): its PEM certificate and key.
    pub fn self_signed(names: &[&str], not_after_year: i32) -> PemPair {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("valid names");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("x"),
        );
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("a certificate");
        PemPair {
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        }
    }

    /// The ring provider, as graygate serves with.
    pub fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn files() -> CertFiles {
        CertFiles {
            cert: "site.pem".into(),
            key: "site.key".into(),
        }
    }

    #[test]
    fn a_good_pair_loads_with_its_names() {
        let pem = self_signed(&["App.Example", "*.app.example", "127.0.0.1"], 2999);
        let loaded = load(&files(), &pem, &provider(), SystemTime::now()).unwrap();
        assert_eq!(loaded.names, vec!["app.example", "*.app.example"]);
        assert!(loaded.not_after > SystemTime::now());
    }

    #[test]
    fn every_problem_names_its_file() {
        let good = self_signed(&["a.example"], 2999);
        let other = self_signed(&["b.example"], 2999);
        let now = SystemTime::now();
        let error = |pem: &PemPair| load(&files(), pem, &provider(), now).unwrap_err();

        let mismatched = PemPair {
            cert: good.cert.clone(),
            key: other.key.clone(),
        };
        let e = error(&mismatched);
        assert_eq!(
            e.to_string(),
            "site.key: the key does not match the certificate site.pem"
        );
        assert_eq!(e.which(), Which::Key);

        let expired = self_signed(&["a.example"], 2021);
        let e = error(&expired);
        assert_eq!(
            e.to_string(),
            "site.pem: the certificate expired on 2021-01-01T00:00:00Z"
        );
        assert_eq!(e.which(), Which::Cert);

        let no_cert = PemPair {
            cert: good.key.clone(),
            key: good.key.clone(),
        };
        assert_eq!(
            error(&no_cert).to_string(),
            "site.pem: holds no certificate (no -----BEGIN CERTIFICATE----- block)"
        );

        let no_key = PemPair {
            cert: good.cert.clone(),
            key: good.cert.clone(),
        };
        let e = error(&no_key);
        assert_eq!(
            e.to_string(),
            "site.key: holds no private key (no PKCS#8, PKCS#1 or SEC1 PEM block)"
        );

        let garbage = PemPair {
            cert: b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
            key: good.key.clone(),
        };
        let e = error(&garbage).to_string();
        assert!(e.starts_with("site.pem: not a PEM certificate file"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("missing.key"),
        };
        let e = read(&files).unwrap_err();
        assert_eq!(e.which(), Which::Cert);
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read: ", files.cert.display())),
            "{e}"
        );
    }
}
