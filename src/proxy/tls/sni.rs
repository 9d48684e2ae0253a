//! Which certificate a handshake gets: chosen by the name the client sent (SNI) among the
//! certificates' DNS names.
//!
//! - An exact name (`app.example.com`) first, then a wildcard one label deep (`*.example.com`
//!   matches `a.example.com`, not `example.com` nor `a.b.example.com`).
//! - When two certificates claim a name, the first in `[tls] certs` wins.
//! - No SNI (a client that connects by IP address), or a name no certificate has: the first
//!   certificate, the default.
//!
//! The set in force is swapped whole ([`SniResolver::swap`]) when the files are reloaded; a
//! handshake reads it with one atomic load and at most two hash lookups.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::{CertError, LoadedCert};

/// The certificates of `[tls] certs`, indexed by their names.
#[derive(Debug)]
pub struct CertSet {
    /// In config order; the first is the default.
    certs: Vec<LoadedCert>,
    /// Exact names -> index into `certs`.
    exact: HashMap<String, usize>,
    /// `*.example.com` -> `example.com` -> index into `certs`.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Indexes `certs` (at least one; the first is the default). A certificate after the first
    /// that has no DNS name is an error: no client could ever get it.
    ///
    /// # Panics
    /// Never with a non-empty `certs`; the config refuses an empty list.
    pub fn new(certs: Vec<LoadedCert>) -> Result<CertSet, CertError> {
        assert!(!certs.is_empty(), "a certificate set needs a certificate");
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certs.iter().enumerate() {
            if i > 0 && cert.names.is_empty() {
                return Err(CertError::NoNames {
                    file: cert.files.cert.clone(),
                });
            }
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Ok(CertSet {
            certs,
            exact,
            wildcard,
        })
    }

    /// The certificates, in config order.
    pub fn certs(&self) -> &[LoadedCert] {
        &self.certs
    }

    /// The certificate for a handshake that sent `sni`.
    pub fn choose(&self, sni: Option<&str>) -> &LoadedCert {
        &self.certs[self.index_of(sni)]
    }

    fn index_of(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else { return 0 };
        let name = name.strip_suffix('.').unwrap_or(name);
        let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        if let Some(&i) = self.exact.get(name.as_ref()) {
            return i;
        }
        name.split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }

    /// `site.pem (a.example, *.a.example; until 2027-01-01T00:00:00Z), ...`: for the log and
    /// the reload answer.
    pub fn describe(&self) -> String {
        self.certs
            .iter()
            .map(|c| {
                let names = if c.names.is_empty() {
                    "no DNS name".to_string()
                } else {
                    c.names.join(", ")
                };
                format!(
                    "{} ({names}; until {})",
                    c.files.cert.display(),
                    humantime::format_rfc3339_seconds(c.not_after)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// rustls' certificate choice, from the set in force.
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl SniResolver {
    pub fn new(set: CertSet) -> SniResolver {
        SniResolver {
            set: ArcSwap::from_pointee(set),
        }
    }

    /// Puts `set` in force for the next handshakes; handshakes under way keep the one they had.
    pub fn swap(&self, set: CertSet) {
        self.set.store(Arc::new(set));
    }

    /// The set in force.
    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("certs", &self.set.load().describe())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().choose(hello.server_name()).key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::certs::testing::{provider, self_signed};
    use super::super::certs::{load, CertFiles};
    use super::*;
    use proptest::prelude::*;
    use std::time::SystemTime;

    fn cert(file: &str, names: &[&str]) -> LoadedCert {
        let pem = self_signed(names, 2999);
        let files = CertFiles {
            cert: file.into(),
            key: format!("{file}.key").into(),
        };
        load(&files, &pem, &provider(), SystemTime::now()).unwrap()
    }

    fn chosen(set: &CertSet, sni: Option<&str>) -> String {
        set.choose(sni).files.cert.display().to_string()
    }

    /// The slow, obvious twin of the index: the first certificate with the exact name, else the
    /// first with a wildcard that covers it, else the first.
    fn linear(certs: &[LoadedCert], sni: Option<&str>) -> usize {
        let Some(name) = sni else { return 0 };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(i) = certs.iter().position(|c| c.names.contains(&name)) {
            return i;
        }
        let covered = |pattern: &String| {
            pattern.strip_prefix("*.").is_some_and(|parent| {
                name.strip_suffix(parent)
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
        };
        certs
            .iter()
            .position(|c| c.names.iter().any(covered))
            .unwrap_or(0)
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let set = CertSet::new(vec![
            cert("default.pem", &["default.example"]),
            cert("wild.pem", &["*.example.com"]),
            cert("exact.pem", &["api.example.com", "other.example"]),
            cert("late.pem", &["other.example", "*.example.com"]),
        ])
        .unwrap();
        assert_eq!(chosen(&set, Some("api.example.com")), "exact.pem");
        assert_eq!(chosen(&set, Some("API.Example.com.")), "exact.pem");
        assert_eq!(chosen(&set, Some("www.example.com")), "wild.pem");
        assert_eq!(chosen(&set, Some("example.com")), "default.pem");
        assert_eq!(chosen(&set, Some("a.b.example.com")), "default.pem");
        assert_eq!(chosen(&set, Some("other.example")), "exact.pem");
        assert_eq!(chosen(&set, Some("unknown.test")), "default.pem");
        assert_eq!(chosen(&set, None), "default.pem");
        assert!(set.describe().starts_with(
            "default.pem (default.example; until 2999-01-01T00:00:00Z), wild.pem (*.example.com; "
        ));
    }

    #[test]
    fn only_the_default_may_have_no_name() {
        let ip_only = cert("ip.pem", &["127.0.0.1"]);
        assert!(ip_only.names.is_empty());
        assert!(CertSet::new(vec![ip_only.clone(), cert("a.pem", &["a.example"])]).is_ok());
        let e = CertSet::new(vec![cert("a.pem", &["a.example"]), ip_only]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ip.pem: the certificate names no DNS name"),
            "{e}"
        );
    }

    #[test]
    fn the_index_agrees_with_the_linear_twin() {
        let certs = vec![
            cert("0.pem", &["a.test"]),
            cert("1.pem", &["*.a.test", "b.test"]),
            cert("2.pem", &["x.a.test", "*.b.test"]),
            cert("3.pem", &["*.b.test", "*.c.test", "c.test"]),
        ];
        let set = CertSet::new(certs.clone()).unwrap();
        let labels = prop::sample::select(vec!["a", "b", "c", "x", "X", "test", "", "*"]);
        proptest!(ProptestConfig::with_cases(500), |(parts in prop::collection::vec(labels, 0..5), dot in any::<bool>(), none in any::<bool>())| {
            let mut name = parts.join(".");
            if dot {
                name.push('.');
            }
            let sni = (!none).then_some(name.as_str());
            prop_assert_eq!(set.index_of(sni), linear(&certs, sni), "sni {:?}", sni);
        });
    }
}
