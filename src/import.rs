//! `graygate import`: bulk-loads a list (a gray list of IPs, token -> user id) into the store a
//! config names, from lines of `key [value]` (value `1` when absent, as the original IP gray list
//! writes it). For seeding a new store or moving a list from another system; written in batches so
//! that a million entries do not become one giant transaction.
//!
//! Every key gets the admin API's checks ([`limits::check_key`], then the store's own
//! [`Store::check_key`]): a key no store can hold (or this store cannot, once escaped), or a
//! key that is not an IP address in a list rules look the client IP up in, stops the import with
//! the `file:line` at fault, as `POST /v1/lists/{list}/entries` would refuse it.

use crate::policy::{edit, PolicyDoc};
use crate::store::{limits, Entry, Store, StoreError};
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
    /// The policy in the store is not valid JSON of a policy, so the lists it reads are unknown.
    #[error("the policy in the store cannot be read: {0}")]
    StoredPolicy(#[source] serde_json::Error),
}

/// The condition that looks `list` up by client IP (its path, like
/// `services[0].rules[1].when`), in the policy graygate would run: the one in the store, else the
/// config's. Keys of such a list must be IP addresses.
pub async fn ip_rule(
    store: &dyn Store,
    config_policy: Option<&PolicyDoc>,
    list: &str,
) -> Result<Option<String>, ImportError> {
    let stored = match store.load_policy().await? {
        Some(p) => {
            Some(serde_json::from_str::<PolicyDoc>(&p.json).map_err(ImportError::StoredPolicy)?)
        }
        None => None,
    };
    Ok(ip_rule_of(stored.as_ref().or(config_policy), list))
}

/// [`ip_rule`] from a policy document at hand (the config's, when the stored one cannot be read
/// because a running graygate holds it).
pub fn ip_rule_of(doc: Option<&PolicyDoc>, list: &str) -> Option<String> {
    edit::ip_keyed_lists(doc?)
        .get(list)
        .map(ToString::to_string)
}

/// Reads `key [value]` lines (blank lines and `#` comments skipped) and writes them to `list`.
/// `ip_rule` is the condition that looks `list` up by client IP, if any ([`ip_rule`]): then
/// every key must be an IP address. `ttl` is bounded by the caller ([`limits::check_ttl`]).
/// Returns how many entries were written.
pub async fn import(
    store: &dyn Store,
    list: &str,
    ttl: Option<Duration>,
    ip_rule: Option<&str>,
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
        if let Err(e) = limits::check_key(key, ip_rule).and_then(|()| store.check_key(list, key)) {
            return Err(ImportError::Line {
                source_name: source_name.into(),
                line: n + 1,
                message: e.to_string(),
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
        let n = import(&store, "gray_ips", None, None, text.as_bytes(), "ips.txt")
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
        let err = import(&store, "l", None, None, "a 1\nb 2 3\n".as_bytes(), "x.txt")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.txt:2: `b 2 3` has more than a key and a value"
        );
    }

    /// Once accepted: the import skipped the checks the admin API makes.
    #[tokio::test]
    async fn keys_get_the_admin_api_checks() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let long = format!("10.0.0.1\n{}\n", "k".repeat(300));
        let err = import(&store, "l", None, None, long.as_bytes(), "x.txt")
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("x.txt:2: `kkk"), "{err}");
        assert!(
            err.to_string().contains("is not a key: 1 to 250 bytes"),
            "{err}"
        );

        let rule = Some("services[0].rules[0].when");
        let text = "10.0.0.7\n# a comment\nalice\n";
        let err = import(&store, "gray_ips", None, rule, text.as_bytes(), "ips.txt")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ips.txt:3: `alice` is not an IP address, and this list is looked up by client IP \
             (services[0].rules[0].when): it would never match"
        );
        // A refused line stops the import before its batch is written.
        assert_eq!(store.lookup("gray_ips", "10.0.0.7").await.unwrap(), None);
        let n = import(
            &store,
            "gray_ips",
            None,
            rule,
            "10.0.0.7\n::1\n".as_bytes(),
            "ips.txt",
        )
        .await
        .unwrap();
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn the_ip_rule_comes_from_the_stored_policy_else_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let doc: PolicyDoc = serde_json::from_value(serde_json::json!({
            "services": [{"name": "web", "stable": "v1", "versions": {"v1": "a", "v2": "b"},
                "rules": [{"name": "gray-ips", "version": "v2",
                    "when": {"client_ip": true, "lookup": {"list": "gray_ips"}}}]}]
        }))
        .unwrap();
        assert_eq!(ip_rule(&store, None, "gray_ips").await.unwrap(), None);
        assert_eq!(
            ip_rule(&store, Some(&doc), "gray_ips")
                .await
                .unwrap()
                .as_deref(),
            Some("services[0].rules[0].when")
        );
        assert_eq!(ip_rule(&store, Some(&doc), "tokens").await.unwrap(), None);
        // A stored policy wins over the config's.
        store
            .save_policy(r#"{"services": []}"#, None)
            .await
            .unwrap();
        assert_eq!(ip_rule(&store, Some(&doc), "gray_ips").await.unwrap(), None);
    }
}
