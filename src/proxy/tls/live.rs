//! The certificates in force, and how new ones get there without a restart: on SIGHUP (the
//! reloader calls [`LiveCerts::reload`]) and when the files change ([`LiveCerts::spawn_watch`]).
//!
//! The files are watched by reading them every `[tls] watch_interval` (2 s by default) and
//! comparing their contents, not with inotify (`notify`): certificates are a few kilobytes,
//! rotated rarely, and often replaced by renaming a directory or a symlink (Kubernetes secrets,
//! certbot's `live/` links), which inotify on the file misses and a read never does. A change is
//! applied when the files read the same at two checks in a row, so that a certificate written a
//! moment before its key is not mistaken for a mismatch.
//!
//! A set that fails to load (a file missing, half written, expired, a key that does not match)
//! is logged once, naming the file and what is wrong, and the set in force stays. Handshakes
//! under way keep the set they started with; the next ones get the new set.
//!
//! A certificate in force that ends within [`EXPIRY_WARNING`] (two weeks) is warned about once:
//! when its set is put in force (at start, by a reload, by the watcher), or, for a set in force
//! for a long time, at the first check of the watcher that finds it that close to its end. That
//! is the case the warning is for: a renewal that failed leaves the files as they were, so
//! nothing is reloaded and nothing else would say it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::certs::{self, CertError, CertFiles, PemPair};
use super::sni::{CertSet, SniResolver};

/// How close to its end a certificate in force gets a warning in the log: two weeks, time enough
/// to renew it by hand when the renewal that should have happened by then did not.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertsReloaded {
    /// The files are the ones in force, unchanged.
    Unchanged(String),
    /// A new set is in force (the description of it).
    Applied(String),
}

/// The certificates in force and the files they come from.
pub struct LiveCerts {
    resolver: Arc<SniResolver>,
    provider: Arc<CryptoProvider>,
    /// Locked by one reload or check at a time, never by a handshake.
    state: Mutex<State>,
}

/// What the watcher compares the files with.
struct State {
    /// The `[tls] certs` entries in force.
    files: Vec<CertFiles>,
    /// The contents the set in force was made from.
    applied: Vec<PemPair>,
    /// Contents seen at the last check that differ from `applied`: applied if the next check
    /// reads the same.
    pending: Option<Vec<PemPair>>,
    /// Contents that failed to load, already logged.
    failed: Option<Vec<PemPair>>,
    /// Which certificates of the set in force (by index) were warned about as ending soon, so
    /// that each is warned about once; emptied when a new set is put in force.
    warned: Vec<bool>,
}

impl LiveCerts {
    /// Loads the files (blocking: at start) into a set in force.
    pub fn load(
        files: &[CertFiles],
        provider: Arc<CryptoProvider>,
    ) -> Result<LiveCerts, CertError> {
        let contents = files
            .iter()
            .map(certs::read)
            .collect::<Result<Vec<_>, _>>()?;
        let set = build(files, &contents, &provider)?;
        let mut warned = Vec::new();
        warn_expiring(&set, SystemTime::now(), &mut warned);
        Ok(LiveCerts {
            resolver: Arc::new(SniResolver::new(set)),
            provider,
            state: Mutex::new(State {
                files: files.to_vec(),
                applied: contents,
                pending: None,
                failed: None,
                warned,
            }),
        })
    }

    /// What rustls asks for the certificate of each handshake.
    pub fn resolver(&self) -> Arc<SniResolver> {
        self.resolver.clone()
    }

    /// The set in force.
    pub fn current(&self) -> Arc<CertSet> {
        self.resolver.current()
    }

    /// Reads `files` (the config's `[tls] certs`, which may have changed) and puts them in
    /// force if they differ from the set in force. On error the set in force stays.
    pub async fn reload(&self, files: &[CertFiles]) -> Result<CertsReloaded, CertError> {
        let mut state = self.state.lock().await;
        let contents = read_all(files).await?;
        if files == state.files && contents == state.applied {
            return Ok(CertsReloaded::Unchanged(self.current().describe()));
        }
        match build(files, &contents, &self.provider) {
            Ok(set) => {
                let described = set.describe();
                let mut warned = Vec::new();
                warn_expiring(&set, SystemTime::now(), &mut warned);
                self.resolver.swap(set);
                *state = State {
                    files: files.to_vec(),
                    applied: contents,
                    pending: None,
                    failed: None,
                    warned,
                };
                Ok(CertsReloaded::Applied(described))
            }
            Err(e) => {
                // Logged by the caller; the watcher need not log it again.
                if files == state.files {
                    state.failed = Some(contents);
                }
                Err(e)
            }
        }
    }

    /// One look at the files: applies them once they changed and then read the same twice.
    /// Also warns of a certificate in force that came within [`EXPIRY_WARNING`] of its end.
    async fn check(&self) {
        let mut state = self.state.lock().await;
        warn_expiring(&self.current(), SystemTime::now(), &mut state.warned);
        let files = state.files.clone();
        let contents = match read_all(&files).await {
            Ok(contents) => contents,
            Err(e) => {
                // Missing or unreadable: maybe mid-rotation. Said when it lasts two checks, once
                // until the files can be read again (an empty list stands for "unreadable").
                let seen = Some(Vec::new());
                if state.failed != seen && state.pending == seen {
                    warn!("TLS certificates not reloaded: {e}; the certificates in force stay");
                    state.failed = seen;
                }
                state.pending = Some(Vec::new());
                return;
            }
        };
        if contents == state.applied {
            state.pending = None;
            state.failed = None;
            return;
        }
        if state.failed.as_ref() == Some(&contents) {
            return;
        }
        if state.pending.as_ref() != Some(&contents) {
            state.pending = Some(contents);
            return;
        }
        match build(&files, &contents, &self.provider) {
            Ok(set) => {
                info!(
                    "TLS certificates reloaded (the files changed): {}",
                    set.describe()
                );
                state.warned.clear();
                warn_expiring(&set, SystemTime::now(), &mut state.warned);
                self.resolver.swap(set);
                state.applied = contents;
                state.pending = None;
                state.failed = None;
            }
            Err(e) => {
                warn!("TLS certificates not reloaded: {e}; the certificates in force stay");
                state.failed = Some(contents);
                state.pending = None;
            }
        }
    }

    /// Checks the files every `every` until the task is aborted.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                live.check().await;
            }
        })
    }
}

impl std::fmt::Debug for LiveCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCerts")
            .field("resolver", &self.resolver)
            .finish()
    }
}

async fn read_all(files: &[CertFiles]) -> Result<Vec<PemPair>, CertError> {
    let mut contents = Vec::with_capacity(files.len());
    for f in files {
        contents.push(certs::read_async(f).await?);
    }
    Ok(contents)
}

/// Logs a warning for each certificate of `set` that ends within [`EXPIRY_WARNING`] of `now` and
/// was not warned about yet; `warned` (by index into the set, empty for a new set) remembers
/// which were. The number of warnings logged.
fn warn_expiring(set: &CertSet, now: SystemTime, warned: &mut Vec<bool>) -> usize {
    warned.resize(set.certs().len(), false);
    let mut logged = 0;
    for (cert, warned) in set.certs().iter().zip(warned.iter_mut()) {
        let left = cert.not_after.duration_since(now).unwrap_or_default();
        if *warned || left >= EXPIRY_WARNING {
            continue;
        }
        *warned = true;
        logged += 1;
        let names = if cert.names.is_empty() {
            "no DNS name".to_string()
        } else {
            cert.names.join(", ")
        };
        warn!(
            "TLS certificate {} ({names}) expires on {}, in {} day(s): renew it",
            cert.files.cert.display(),
            humantime::format_rfc3339_seconds(cert.not_after),
            left.as_secs() / (24 * 60 * 60),
        );
    }
    logged
}

/// Loads every entry and indexes them; the first error wins.
fn build(
    files: &[CertFiles],
    contents: &[PemPair],
    provider: &CryptoProvider,
) -> Result<CertSet, CertError> {
    let now = SystemTime::now();
    let loaded = files
        .iter()
        .zip(contents)
        .map(|(f, pem)| certs::load(f, pem, provider, now))
        .collect::<Result<Vec<_>, _>>()?;
    CertSet::new(loaded)
}

#[cfg(test)]
mod tests {
    use super::super::certs::testing::{provider, self_signed};
    use super::*;

    fn write(dir: &std::path::Path, name: &str, pem: &PemPair) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, &pem.cert).unwrap();
        std::fs::write(&files.key, &pem.key).unwrap();
        files
    }

    #[test]
    fn a_certificate_near_its_end_is_warned_about_once() {
        let load = |name: &str, year| {
            let files = CertFiles {
                cert: format!("{name}.pem").into(),
                key: format!("{name}.key").into(),
            };
            let pem = self_signed(&[&format!("{name}.example")], year);
            certs::load(&files, &pem, &provider(), std::time::UNIX_EPOCH).unwrap()
        };
        let set = CertSet::new(vec![load("soon", 2999), load("later", 3000)]).unwrap();
        let [soon, later] = [0, 1].map(|i| set.certs()[i].not_after);
        let day = Duration::from_secs(24 * 60 * 60);
        let mut warned = Vec::new();

        // Three weeks before the first ends: nothing to say.
        assert_eq!(warn_expiring(&set, soon - 21 * day, &mut warned), 0);
        // A week before: said once, however often the watcher looks.
        assert_eq!(warn_expiring(&set, soon - 7 * day, &mut warned), 1);
        assert_eq!(warn_expiring(&set, soon - 6 * day, &mut warned), 0);
        assert_eq!(warned, [true, false]);
        // The second one's turn.
        assert_eq!(warn_expiring(&set, later - day, &mut warned), 1);
        assert_eq!(warn_expiring(&set, later - day, &mut warned), 0);
        // A set put in force anew is warned about anew.
        let mut fresh = Vec::new();
        assert_eq!(warn_expiring(&set, later - day, &mut fresh), 2);
    }

    fn names(live: &LiveCerts) -> Vec<String> {
        live.current().certs()[0].names.clone()
    }

    #[tokio::test]
    async fn a_change_is_applied_once_it_reads_the_same_twice() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), "site", &self_signed(&["one.example"], 2999));
        let live = LiveCerts::load(std::slice::from_ref(&files), Arc::new(provider())).unwrap();
        assert_eq!(names(&live), vec!["one.example"]);

        write(dir.path(), "site", &self_signed(&["two.example"], 2999));
        live.check().await;
        assert_eq!(names(&live), vec!["one.example"], "not yet: seen once");
        live.check().await;
        assert_eq!(names(&live), vec!["two.example"]);
    }

    #[tokio::test]
    async fn a_bad_change_keeps_the_set_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), "site", &self_signed(&["one.example"], 2999));
        let live = LiveCerts::load(std::slice::from_ref(&files), Arc::new(provider())).unwrap();

        // A key of another certificate.
        std::fs::write(&files.key, self_signed(&["x.example"], 2999).key).unwrap();
        live.check().await;
        live.check().await;
        assert_eq!(names(&live), vec!["one.example"]);
        let e = live.reload(std::slice::from_ref(&files)).await.unwrap_err();
        assert!(e.to_string().contains("the key does not match"), "{e}");

        // A missing file.
        std::fs::remove_file(&files.cert).unwrap();
        live.check().await;
        live.check().await;
        assert_eq!(names(&live), vec!["one.example"]);

        // Good again, through a reload (SIGHUP): applied at once.
        let files = write(dir.path(), "site", &self_signed(&["three.example"], 2999));
        let reloaded = live.reload(std::slice::from_ref(&files)).await.unwrap();
        assert!(
            matches!(&reloaded, CertsReloaded::Applied(d) if d.contains("three.example")),
            "{reloaded:?}"
        );
        assert_eq!(names(&live), vec!["three.example"]);
        let again = live.reload(std::slice::from_ref(&files)).await.unwrap();
        assert!(matches!(again, CertsReloaded::Unchanged(_)), "{again:?}");
    }
}
