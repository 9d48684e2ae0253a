//! The last-known-good snapshot: the last policy this instance applied, kept in a local file.
//!
//! A shared store can be down when an instance starts, or come back empty (a Redis restarted
//! without persistence). The snapshot lets the instance start from the policy it last ran rather
//! than from the config's (which may be far behind what operators changed at runtime), and lets
//! it put that policy back into a store that lost it (see `fleet`).
//!
//! The file is JSON ([`Snapshot`]): the revision, the document, when and by which instance it was
//! written. It is written after every install, atomically: a temporary file in the same
//! directory, fsync, rename over the old one, fsync of the directory, so that a crash leaves
//! either the old snapshot or the new one, never half of one. Writes run on a background task
//! that always writes the newest installed policy (a burst of changes costs one write, not one
//! per change). A file that cannot be read or does not parse is reported ([`SnapshotError`]) and
//! ignored by the caller: never a crash.

use crate::policy::PolicyDoc;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The snapshot file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The store revision of the document (0: the config's policy, never stored).
    pub revision: u64,
    /// When it was written, in ms since the Unix epoch.
    pub written_at_ms: u64,
    /// The instance that wrote it.
    pub instance: String,
    /// The policy document.
    pub policy: PolicyDoc,
}

impl Snapshot {
    /// How long ago it was written (zero for a clock that went back).
    pub fn age(&self) -> Duration {
        let at = UNIX_EPOCH + Duration::from_millis(self.written_at_ms);
        SystemTime::now().duration_since(at).unwrap_or_default()
    }
}

/// Why a snapshot file could not be read or written. The caller logs it and goes on without.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file (or its directory) could not be read or written.
    #[error("snapshot {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a snapshot graygate wrote (truncated, edited, another format).
    #[error("snapshot {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// Reads the snapshot at `path`; `Ok(None)` when there is no file.
pub fn read(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: path.to_path_buf(),
                what: "cannot read it",
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// Writes `snapshot` to `path` atomically: a temporary file beside it, fsync, rename, fsync of
/// the directory. The directory is created if missing.
pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, what, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io("cannot create its directory"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let json = serde_json::to_vec_pretty(snapshot).expect("a snapshot always serializes");
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&json)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io("cannot write the temporary file")(e));
    }
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(io("cannot rename the temporary file over it")(e));
    }
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync its directory"))
}

/// What the admin status and the fleet view say about this instance's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// The file.
    pub path: PathBuf,
    /// The revision last written (`None`: none written by this process yet).
    pub written: Option<u64>,
    /// When, in ms since the Unix epoch.
    pub written_at_ms: Option<u64>,
    /// The last write's error, cleared by the next write that succeeds.
    pub error: Option<String>,
    /// The revision this process started from, when it started from the snapshot (the store
    /// was down), and the snapshot's age then.
    pub started_from: Option<(u64, Duration)>,
}

/// The background writer: [`SnapshotWriter::offer`] hands it every installed policy; it writes
/// the newest one.
pub(super) struct SnapshotWriter {
    offers: watch::Sender<Option<Arc<Snapshot>>>,
    status: Arc<Mutex<SnapshotStatus>>,
}

impl SnapshotWriter {
    /// Starts the writer task for `path`; it ends when the writer is dropped.
    pub(super) fn spawn(path: PathBuf) -> SnapshotWriter {
        let (offers, mut rx) = watch::channel::<Option<Arc<Snapshot>>>(None);
        let status = Arc::new(Mutex::new(SnapshotStatus {
            path: path.clone(),
            ..SnapshotStatus::default()
        }));
        let shared = Arc::clone(&status);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(snapshot) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let path = path.clone();
                let done =
                    tokio::task::spawn_blocking(move || write(&path, &snapshot).map(|()| snapshot))
                        .await;
                let mut status = shared.lock().unwrap_or_else(|e| e.into_inner());
                match done {
                    Ok(Ok(snapshot)) => {
                        if status.error.take().is_some() {
                            tracing::info!(path = %status.path.display(), revision = snapshot.revision, "snapshot written again");
                        }
                        status.written = Some(snapshot.revision);
                        status.written_at_ms = Some(snapshot.written_at_ms);
                    }
                    Ok(Err(e)) => {
                        let text = e.to_string();
                        if status.error.as_ref() != Some(&text) {
                            tracing::error!(error = %text, "cannot write the last-known-good snapshot: a restart while the store is down starts from an older policy");
                        }
                        status.error = Some(text);
                    }
                    Err(_) => {}
                }
            }
        });
        SnapshotWriter { offers, status }
    }

    /// Hands the writer the policy just installed.
    pub(super) fn offer(&self, snapshot: Snapshot) {
        self.offers.send_replace(Some(Arc::new(snapshot)));
    }

    /// Notes that this process started from `snapshot`.
    pub(super) fn started_from(&self, snapshot: &Snapshot) {
        self.lock().started_from = Some((snapshot.revision, snapshot.age()));
    }

    pub(super) fn status(&self) -> SnapshotStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SnapshotStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(revision: u64) -> Snapshot {
        let policy: PolicyDoc = toml::from_str(
            "[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v1 = \"stable\" }\n",
        )
        .unwrap();
        Snapshot {
            revision,
            written_at_ms: 1_700_000_000_000,
            instance: "a1".into(),
            policy,
        }
    }

    #[test]
    fn a_snapshot_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("snapshot.json");
        assert!(read(&path).unwrap().is_none(), "no file: none");
        write(&path, &snapshot(3)).unwrap();
        assert_eq!(read(&path).unwrap(), Some(snapshot(3)));
        write(&path, &snapshot(4)).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().revision, 4);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["snapshot.json"]);
    }

    #[test]
    fn a_corrupt_or_unreadable_snapshot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        std::fs::write(&path, b"{\"revision\": 3, \"polic").unwrap();
        let e = read(&path).unwrap_err();
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("snapshot {} is corrupt: ", path.display())),
            "{e}"
        );
        // A directory where the file should be: unreadable, named too.
        let e = read(dir.path()).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "snapshot {}: cannot read it: ",
                dir.path().display()
            )),
            "{e}"
        );
        // A write into a path whose parent is a file fails with the file named.
        let e = write(&path.join("x"), &snapshot(1)).unwrap_err();
        assert!(e.to_string().contains("snapshot.json"), "{e}");
    }

    #[tokio::test]
    async fn the_writer_writes_the_newest_offer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let writer = SnapshotWriter::spawn(path.clone());
        for revision in 1..=5 {
            writer.offer(snapshot(revision));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while writer.status().written != Some(5) {
            assert!(std::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(read(&path).unwrap().unwrap().revision, 5);
        assert_eq!(writer.status().error, None);
    }
}
