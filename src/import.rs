//! `graygate import`: bulk-loads a list (a gray list of IPs, token -> user id) into the store a
//! config names, from lines of `key [value]` (value `1` when absent, as the original IP gray list
//! writes it). For seeding a new store or moving a list from another system; written in batches so
//! that a million entries do not become one giant transaction.

use crate::store::{Entry, Store, StoreError};
use std::io::BufRead;
use std::time::Duration;

/// Entries per store write.
const BATCH: usize = 10_000;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input could not be read (the OS error is kept as the source).
    #[error("reading {source_name}: {error}")]
    Read {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
    /// A line is not `key [value]`.
    #[error("{source_name}:{line}: {message}")]
    Line {
        source_name: String,
        line: usize,
        message: String,
    },
    /// The store refused a batch; the batches before it were written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads `key [value]` lines (blank lines and `#` comments skipped) and writes them to `list`.
/// Returns how many entries were written.
pub async fn import(
    store: &dyn Store,
    list: &str,
    ttl: Option<Duration>,
    input: impl BufRead,
    source_name: &str,
) -> Result<usize, ImportError> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut written = 0;
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|error| ImportError::Read {
            source_name: source_name.into(),
            error,
        })?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let key = parts.next().unwrap_or_default();
        let value = parts.next().unwrap_or("1");
        if parts.next().is_some() {
            return Err(ImportError::Line {
                source_name: source_name.into(),
                line: n + 1,
                message: format!("`{line}` has more than a key and a value"),
            });
        }
        batch.push(Entry::new(key, value, ttl));
        if batch.len() == BATCH {
            store.put_entries(list, &batch).await?;
            written += batch.len();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.put_entries(list, &batch).await?;
        written += batch.len();
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[tokio::test]
    async fn imports_keys_with_default_and_given_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let text = "# gray IPs\n10.0.0.7\n\n10.0.0.8 0\n";
        let n = import(&store, "gray_ips", None, text.as_bytes(), "ips.txt")
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            store
                .lookup("gray_ips", "10.0.0.7")
                .await
                .unwrap()
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            store
                .lookup("gray_ips", "10.0.0.8")
                .await
                .unwrap()
                .as_deref(),
            Some("0")
        );
    }

    #[tokio::test]
    async fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let err = import(&store, "l", None, "a 1\nb 2 3\n".as_bytes(), "x.txt")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.txt:2: `b 2 3` has more than a key and a value"
        );
    }
}
