//! The config file's policy, in the live-change model: it **seeds** the store, and is applied
//! again only when it changed since it was last applied.
//!
//! The store holds the policy that runs, with every runtime change (admin API, `graygate ctl`, a
//! rollout driving its steps). Re-applying the file on every SIGHUP would silently undo those
//! changes, on every instance sharing the store, and would undo a rollout in progress. So:
//! - at start, an empty store is seeded with the file's policy; a stored policy is used as it is;
//! - a reload (SIGHUP, `POST /v1/reload`) applies the file's policy only when it differs from
//!   the one last applied from a config (its digest is kept in the store record
//!   `config/applied`, shared by every instance), and never over an active rollout unless forced;
//! - whether the running policy differs from the file's is logged when it changes and exported
//!   as a gauge, so that an operator knows the file is not what runs.

use super::{Gateway, GatewayError};
use crate::policy::PolicyDoc;
use crate::store::ErrorChain;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// What applying the config file's policy did (SIGHUP, `POST /v1/reload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigPolicy {
    /// The config names no policy: nothing to apply.
    None,
    /// The file's policy is the one last applied from the config (at `applied`): it is not
    /// applied again, so the runtime changes made since stay. The policy runs at `revision`.
    NotChanged { applied: u64, revision: u64 },
    /// Applied: the file's policy runs, at `revision`. `unchanged`: the store held it already
    /// (no new revision). `forced`: applied because the operator forced it.
    Applied {
        revision: u64,
        unchanged: bool,
        forced: bool,
    },
    /// Not applied: these services have a rollout in progress that the file's policy would
    /// replace. Forcing applies it anyway. The policy runs at `revision`.
    Refused {
        revision: u64,
        rollouts: Vec<String>,
    },
}

/// The store record that says which config policy was last applied: `config/applied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedRecord {
    /// [`digest`] of the document applied.
    digest: String,
    /// The revision it became (or the revision running when it was recorded at start).
    revision: u64,
    /// When, RFC 3339.
    time: String,
}

/// The store record's key.
pub(super) const APPLIED_KEY: &str = "config/applied";

/// A digest of a policy document: xxh3-128 of its JSON (fields in declaration order, maps
/// sorted), so equal documents have equal digests however they were written.
fn digest(doc: &PolicyDoc) -> String {
    let json = serde_json::to_string(doc).expect("a policy document always serializes");
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(json.as_bytes()))
}

/// The config's policy as the gateway knows it: the file's document and whether the running
/// policy differs from it.
pub(super) struct ConfigState {
    /// The file's policy as last read (at start, or by a reload); `None`: the config has none.
    file: Mutex<Option<PolicyDoc>>,
    /// [`UNKNOWN`], [`SAME`] or [`DIFFERS`]: read by the metrics without a lock.
    differs: AtomicU8,
}

/// No config policy, or nothing compared yet.
const UNKNOWN: u8 = 0;
/// The running policy is the file's.
const SAME: u8 = 1;
/// The running policy differs from the file's.
const DIFFERS: u8 = 2;

impl ConfigState {
    pub(super) fn new(file: Option<&PolicyDoc>) -> Self {
        ConfigState {
            file: Mutex::new(file.cloned()),
            differs: AtomicU8::new(UNKNOWN),
        }
    }

    /// Compares the running policy (just installed at `revision`) with the file's, and says so
    /// in the log when that changes: once, not at every change.
    pub(super) fn compare(&self, running: &PolicyDoc, revision: u64) {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let now = match file.as_ref() {
            None => UNKNOWN,
            Some(doc) if doc == running => SAME,
            Some(_) => DIFFERS,
        };
        let before = self.differs.swap(now, Ordering::AcqRel);
        match (before, now) {
            (b, DIFFERS) if b != DIFFERS => tracing::info!(
                revision,
                "the running policy differs from the config file's: the file only seeds the store, so runtime changes stay; a reload (SIGHUP, `graygate ctl reload`) applies the file's policy when it changes"
            ),
            (DIFFERS, SAME) => {
                tracing::info!(revision, "the running policy is the config file's again")
            }
            _ => {}
        }
    }

    /// The file's policy, as read last.
    fn set_file(&self, doc: Option<&PolicyDoc>) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = doc.cloned();
    }
}

impl Gateway {
    /// Whether the running policy differs from the config file's policy (as last read); `None`
    /// when the config has none.
    pub fn config_differs(&self) -> Option<bool> {
        match self.config.differs.load(Ordering::Acquire) {
            SAME => Some(false),
            DIFFERS => Some(true),
            _ => None,
        }
    }

    /// Applies the config file's policy `doc` (just read again by a reload) if it changed since
    /// it was last applied from a config, and no rollout is in progress; `force` applies it in
    /// any case. Goes through [`Gateway::change`] as `config`, with `why` (what reloaded it) in
    /// the summary, and records what was applied.
    pub async fn apply_config_policy(
        &self,
        doc: Option<&PolicyDoc>,
        force: bool,
        why: &str,
    ) -> Result<ConfigPolicy, GatewayError> {
        self.config.set_file(doc);
        self.config.compare(self.policy().doc(), self.revision());
        let Some(doc) = doc else {
            return Ok(ConfigPolicy::None);
        };
        // A store that lost its data is restored (or refused) before the record of the config
        // policy last applied is read: it lived in the store too, and its absence must not make
        // the file's policy look new and put it over the restored one.
        match self.reload().await {
            Ok(_) | Err(GatewayError::BadStoredPolicy { .. }) => {}
            Err(e) => return Err(e),
        }
        let record = self.applied_record().await?;
        if let Some(record) = record.filter(|r| r.digest == digest(doc) && !force) {
            return Ok(ConfigPolicy::NotChanged {
                applied: record.revision,
                revision: self.revision(),
            });
        }
        let summary = format!("policy from the config file ({why})");
        let applied = self
            .change(None, "config", &summary, |current| {
                let rollouts: Vec<String> = current
                    .active_rollouts()
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                if !rollouts.is_empty() && !force {
                    return Ok(Some(rollouts));
                }
                current.clone_from(doc);
                Ok(None)
            })
            .await?;
        if let Some(rollouts) = applied.value {
            return Ok(ConfigPolicy::Refused {
                revision: applied.revision,
                rollouts,
            });
        }
        self.record_applied(doc, applied.revision).await;
        Ok(ConfigPolicy::Applied {
            revision: applied.revision,
            unchanged: applied.unchanged,
            forced: force,
        })
    }

    /// At start, with a policy in the store and one in the config: the stored one runs. Says
    /// whether the file's is the one last applied; with no record yet (a store seeded before
    /// records were kept), the file's policy is recorded as applied now, so that a reload
    /// applies it once it changes rather than undoing the runtime changes at once.
    pub(super) async fn seen_at_start(&self, doc: &PolicyDoc, revision: u64) {
        match self.applied_record().await {
            Ok(None) => {
                self.record_applied(doc, revision).await;
                tracing::info!(
                    revision,
                    "the store holds a policy: it runs; the config's policy seeds only an empty store and is applied again when it changes (SIGHUP, `graygate ctl reload`)"
                );
            }
            Ok(Some(record)) if record.digest != digest(doc) => tracing::warn!(
                revision,
                applied = record.revision,
                "the config's policy changed since it was last applied: the stored policy runs; a reload (SIGHUP, `graygate ctl reload`) applies the file's"
            ),
            Ok(Some(_)) => tracing::info!(
                revision,
                "the store holds a policy: it runs; the config's policy is the one last applied"
            ),
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot read which config policy was last applied")
            }
        }
    }

    /// Records `doc` as the config policy applied at `revision`. A failure is logged: the next
    /// reload applies the file once more, which changes nothing if the store holds it.
    pub(super) async fn record_applied(&self, doc: &PolicyDoc, revision: u64) {
        let record = AppliedRecord {
            digest: digest(doc),
            revision,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let json = serde_json::to_string(&record).expect("a record always serializes");
        if let Err(e) = self.store.put_record(APPLIED_KEY, &json, None).await {
            tracing::warn!(error = %ErrorChain(&e), revision, "cannot record which config policy was applied: the next reload applies it again");
        }
    }

    /// The config file's policy as last read, if it has one.
    pub(super) fn config_file_policy(&self) -> Option<PolicyDoc> {
        self.config
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records `doc` as the config policy applied at `revision` when the store holds no record
    /// (it lost it with the policy): the restored policy then counts as what the file gave, and
    /// a reload applies the file only once it changes.
    pub(super) async fn record_applied_if_missing(&self, doc: &PolicyDoc, revision: u64) {
        match self.applied_record().await {
            Ok(Some(_)) => {}
            Ok(None) => self.record_applied(doc, revision).await,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot read which config policy was last applied")
            }
        }
    }

    /// The `config/applied` record, if any. One that does not parse (written by something
    /// else) counts as none.
    async fn applied_record(&self) -> Result<Option<AppliedRecord>, GatewayError> {
        let Some(json) = self.store.get_record(APPLIED_KEY).await? else {
            return Ok(None);
        };
        match serde_json::from_str(&json) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                tracing::warn!(error = %e, "the record of the config policy last applied does not parse: taken as none");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{doc, gateway, TestStore, WEB};
    use super::*;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// `web` with a version `v3` more.
    fn with_v3() -> PolicyDoc {
        let mut d = doc(WEB);
        d.services[0].versions.insert("v3".into(), "canary".into());
        d
    }

    #[test]
    fn equal_documents_have_equal_digests() {
        let text = "[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v2 = \"b\", v1 = \"a\" }\n";
        let reordered = "[[services]]\nversions = { v1 = \"a\", v2 = \"b\" }\nstable = \"v1\"\nname = \"web\"\n";
        assert_eq!(digest(&doc(text)), digest(&doc(reordered)));
        assert_ne!(digest(&doc(WEB)), digest(&with_v3()));
        assert_eq!(digest(&doc(WEB)).len(), 32);
    }

    #[tokio::test]
    async fn a_reload_applies_the_file_only_when_it_changed_since_it_was_applied() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        assert_eq!(g.config_differs(), Some(false));

        // A runtime change; the same file reloaded keeps it.
        g.change(None, "alice", "add v3", |d| {
            d.services[0].versions.insert("v3".into(), "canary".into());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(g.config_differs(), Some(true));
        let same = g
            .apply_config_policy(Some(&doc(WEB)), false, "test")
            .await
            .unwrap();
        assert_eq!(
            same,
            ConfigPolicy::NotChanged {
                applied: 1,
                revision: 2
            }
        );
        assert!(g.policy().doc().services[0].versions.contains_key("v3"));

        // An edited file is applied, once.
        let mut edited = doc(WEB);
        edited.services[0]
            .versions
            .insert("v4".into(), "canary".into());
        let applied = g
            .apply_config_policy(Some(&edited), false, "test")
            .await
            .unwrap();
        assert_eq!(
            applied,
            ConfigPolicy::Applied {
                revision: 3,
                unchanged: false,
                forced: false
            }
        );
        assert_eq!(*g.policy().doc(), edited);
        assert_eq!(g.config_differs(), Some(false));
        let again = g
            .apply_config_policy(Some(&edited), false, "test")
            .await
            .unwrap();
        assert!(matches!(again, ConfigPolicy::NotChanged { applied: 3, .. }));

        // Forced: applied even though it is the one last applied (here it changes nothing).
        let forced = g
            .apply_config_policy(Some(&edited), true, "test")
            .await
            .unwrap();
        assert_eq!(
            forced,
            ConfigPolicy::Applied {
                revision: 3,
                unchanged: true,
                forced: true
            }
        );
        assert_eq!(
            g.apply_config_policy(None, false, "test").await.unwrap(),
            ConfigPolicy::None
        );
        assert_eq!(g.config_differs(), None);
    }

    #[tokio::test]
    async fn a_started_gateway_with_a_stored_policy_records_the_file_as_its_baseline() {
        let store = TestStore::new();
        drop(gateway(&store, Some(&doc(WEB)), TIMEOUT).await);
        // Another start, with the file edited meanwhile: the stored policy runs, and the file
        // counts as changed since it was applied.
        let g = gateway(&store, Some(&with_v3()), TIMEOUT).await;
        assert_eq!(*g.policy().doc(), doc(WEB));
        assert_eq!(g.config_differs(), Some(true));
        let applied = g
            .apply_config_policy(Some(&with_v3()), false, "test")
            .await
            .unwrap();
        assert!(
            matches!(applied, ConfigPolicy::Applied { revision: 2, .. }),
            "{applied:?}"
        );
    }
}
