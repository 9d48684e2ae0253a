//! The policy history as the gateway writes and reads it: one record per change, saying who made
//! it, when, and how to go back.
//!
//! A record does not hold the documents before and after the change: it holds the reverse patch
//! of the change (RFC 6902, `undo`: how to turn the document the change made into the one before
//! it). The newest document is the stored policy itself, so any kept revision is rebuilt by
//! walking back from it, newest record first, applying each `undo`. A weight change of a 9 MB
//! policy then costs a record of a few hundred bytes instead of two copies of the policy, and the
//! store's byte bound ([`HistoryRetention::max_bytes`]) counts what the changes really are.
//!
//! Walking back needs every revision between the stored policy and the one asked for to have its
//! record: a revision written without one (by hand in Redis, or by `graygate import`) ends what can
//! be rebuilt, and is named in the error ([`HistoryError::Broken`]). Records written before `undo`
//! existed hold both documents whole (`before`, `after`); they are read as they are and start a
//! new walk, so an upgraded store keeps its history.
//!
//! Pruning the oldest records (the store does it, see [`HistoryRetention`]) never breaks a walk:
//! walks start at the newest end.

use super::Gateway;
use crate::api::{HistoryChange, HistoryEntry};
use crate::policy::PolicyDoc;
use crate::store::{HistoryRecord, HistoryRetention, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many records a walk back reads from the store at a time.
const WALK_PAGE: usize = 100;

/// How many times a walk back starts again because a change landed while it read.
const WALK_ATTEMPTS: usize = 3;

/// A history record as stored, JSON. `revision` is its first field, so that a store can read it
/// from the text's start (the Redis store's upgrade of an old history does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    /// The revision the change made.
    pub revision: u64,
    /// When, in RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Who: the admin token's name, `config`, or the rollout driver.
    pub actor: String,
    /// What, in a few words.
    pub summary: String,
    /// The patch from the document this change made back to the one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<json_patch::Patch>,
    /// Records written before `undo` existed: the document before the change, whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// Records written before `undo` existed: the document the change made, whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Set on the record of a restore (the store had lost its data and an instance wrote its
    /// policy back): the revision the store was at then (0: empty). The record has no `undo`:
    /// what came before is lost, and walks back stop here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_from: Option<u64>,
}

impl Record {
    /// The record of the change from `before` to `after`, made by `actor` now.
    pub fn new(
        revision: u64,
        actor: &str,
        summary: &str,
        before: &PolicyDoc,
        after: &PolicyDoc,
    ) -> Record {
        let before = serde_json::to_value(before).expect("a policy document always serializes");
        let after = serde_json::to_value(after).expect("a policy document always serializes");
        Record {
            revision,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            actor: actor.to_owned(),
            summary: summary.to_owned(),
            undo: Some(json_patch::diff(&after, &before)),
            before: None,
            after: None,
            gap_from: None,
        }
    }

    /// The record of a restore at `revision` by `actor`: the store was at `from` (0: empty), and
    /// `doc` is the document restored. It holds the document whole (`after`), so that a walk
    /// back can start at it, and no way back past it.
    pub fn gap(revision: u64, actor: &str, summary: &str, from: u64, doc: &PolicyDoc) -> Record {
        Record {
            revision,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            actor: actor.to_owned(),
            summary: summary.to_owned(),
            undo: None,
            before: None,
            after: Some(serde_json::to_value(doc).expect("a policy document always serializes")),
            gap_from: Some(from),
        }
    }

    /// The record as the store keeps it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a history record always serializes")
    }
}

/// The head of a record, for a page: parsing skips the rest.
#[derive(Deserialize)]
struct Head {
    revision: u64,
    time: String,
    actor: String,
    summary: String,
}

/// Why a revision of the history cannot be shown or undone to.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The revision has no record: it is newer than the policy, was pruned, or was written
    /// without one.
    #[error("revision {revision} is not in the history ({kept})")]
    NotInHistory {
        revision: u64,
        /// What the history keeps, in words, so that the caller knows why.
        kept: String,
    },
    /// A revision between the stored policy and the one asked for was written without a
    /// history record, so the documents cannot be rebuilt past it.
    #[error("revision {revision} cannot be rebuilt: revision {missing} was written without a history record (not through graygate), and revisions older than it cannot be rebuilt from the current policy")]
    Broken { revision: u64, missing: u64 },
    /// The store lost its data and revision `restored` was written back from an instance's
    /// last-known-good policy: what came before it is lost.
    #[error("revision {revision} cannot be rebuilt: the store lost its data and revision {restored} was restored from an instance's last-known-good policy (the store was at {from} then); the history before revision {restored} is lost")]
    Gap {
        revision: u64,
        restored: u64,
        from: u64,
    },
    /// A record or the stored policy is not what graygate wrote.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Gateway {
    /// One page of the history, newest first: at most `limit` changes older than `before` (all
    /// when `None`), and the revision to pass as `before` for the next page when there are more.
    /// Records that do not parse (written by something else) are skipped.
    pub async fn history_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<HistoryChange>, Option<u64>), StoreError> {
        let records = self
            .store
            .load_history(before, limit.saturating_add(1))
            .await?;
        let more = records.len() > limit;
        let changes: Vec<HistoryChange> = records
            .iter()
            .take(limit)
            .filter_map(|r| match serde_json::from_str::<Head>(&r.json) {
                Ok(head) => Some(HistoryChange {
                    revision: head.revision,
                    time: head.time,
                    actor: head.actor,
                    summary: head.summary,
                    bytes: r.json.len() as u64,
                }),
                Err(e) => {
                    tracing::warn!(revision = r.revision, error = %e, "skipping a history record that does not parse");
                    None
                }
            })
            .collect();
        let next = match records.get(limit.saturating_sub(1)) {
            Some(last) if more && limit > 0 => Some(last.revision),
            _ => None,
        };
        Ok((changes, next))
    }

    /// The change that made `revision`, with the documents before and after it, rebuilt from the
    /// stored policy and the records newer than it (see the module documentation).
    pub async fn history_entry(&self, revision: u64) -> Result<HistoryEntry, HistoryError> {
        for _ in 0..WALK_ATTEMPTS {
            match self.walk_back(revision).await? {
                Walk::Found(entry) => return Ok(*entry),
                Walk::Raced => continue,
            }
        }
        Err(HistoryError::Store(StoreError::unavailable(
            self.store.kind(),
            format!(
                "the policy changed {WALK_ATTEMPTS} times while revision {revision} was rebuilt; try again"
            ),
        )))
    }

    /// One walk back from the stored policy to `revision`.
    async fn walk_back(&self, revision: u64) -> Result<Walk, HistoryError> {
        let not_in = || HistoryError::NotInHistory {
            revision,
            kept: kept_words(self.history_retention),
        };
        let Some(stored) = self.store.load_policy().await? else {
            return Err(not_in());
        };
        if revision > stored.revision || revision == 0 {
            return Err(not_in());
        }
        let bad = |key: String, detail: String| {
            HistoryError::Store(StoreError::bad_data(self.store.kind(), key, detail))
        };
        // `doc` is the document of revision `at`.
        let mut doc: Value = serde_json::from_str(&stored.json).map_err(|e| {
            bad(
                "policy".into(),
                format!("the stored policy does not parse: {e}"),
            )
        })?;
        let mut at = stored.revision;
        let mut cursor = None;
        loop {
            let page = self.store.load_history(cursor, WALK_PAGE).await?;
            if page.is_empty() {
                return Err(not_in());
            }
            for HistoryRecord {
                revision: key,
                json,
            } in page
            {
                cursor = Some(key);
                if key > stored.revision {
                    // A change landed between reading the policy and its history.
                    return Ok(Walk::Raced);
                }
                if key < revision {
                    return Err(not_in());
                }
                let record: Record = serde_json::from_str(&json).map_err(|e| {
                    bad(
                        format!("history/{key}"),
                        format!("the record does not parse: {e}"),
                    )
                })?;
                // A record that holds its document whole starts the walk again from it.
                if let Some(after) = record.after {
                    doc = after;
                    at = key;
                }
                if at != key {
                    return Err(HistoryError::Broken {
                        revision,
                        missing: at,
                    });
                }
                // The document after this change, kept only for the change asked for: a walk
                // past the others patches `doc` in place, without a copy per step.
                let after = (key == revision).then(|| doc.clone());
                if let Some(from) = record.gap_from {
                    // A restore: its document is known, what came before it is not. The
                    // restore itself shows as a change that changed nothing.
                    let Some(after) = after else {
                        return Err(HistoryError::Gap {
                            revision,
                            restored: key,
                            from,
                        });
                    };
                    let as_doc = serde_json::from_value::<PolicyDoc>(after).map_err(|e| {
                        bad(
                            format!("history/{key}"),
                            format!("the restored document is not a policy: {e}"),
                        )
                    })?;
                    return Ok(Walk::Found(Box::new(HistoryEntry {
                        revision,
                        time: record.time,
                        actor: record.actor,
                        summary: record.summary,
                        before: as_doc.clone(),
                        after: as_doc,
                    })));
                }
                match (record.before, &record.undo) {
                    (Some(before), _) => doc = before,
                    (None, Some(undo)) => json_patch::patch(&mut doc, undo).map_err(|e| {
                        bad(
                            format!("history/{key}"),
                            format!("the record's undo does not apply: {e}"),
                        )
                    })?,
                    (None, None) => {
                        return Err(bad(
                            format!("history/{key}"),
                            "the record has neither undo nor before".into(),
                        ))
                    }
                }
                if let Some(after) = after {
                    let as_doc = |value: Value, which: &str| {
                        serde_json::from_value::<PolicyDoc>(value).map_err(|e| {
                            bad(
                                format!("history/{key}"),
                                format!("the document {which} the change is not a policy: {e}"),
                            )
                        })
                    };
                    return Ok(Walk::Found(Box::new(HistoryEntry {
                        revision,
                        time: record.time,
                        actor: record.actor,
                        summary: record.summary,
                        before: as_doc(doc, "before")?,
                        after: as_doc(after, "after")?,
                    })));
                }
                at = key - 1;
            }
        }
    }

    /// What the history keeps, as the config says it.
    pub fn history_retention(&self) -> HistoryRetention {
        self.history_retention
    }
}

/// How a walk back ended.
enum Walk {
    Found(Box<HistoryEntry>),
    /// A change landed while it read: start again.
    Raced,
}

/// `the newest 1000 changes, at most 64.0 MiB of records`.
pub fn kept_words(retention: HistoryRetention) -> String {
    format!(
        "the history keeps the newest {} changes, at most {} of records",
        retention.keep,
        bytesize::ByteSize::b(retention.max_bytes).display().iec()
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{doc, gateway, TestStore, WEB};
    use super::*;
    use crate::policy::model::SplitDoc;
    use crate::store::Store;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// The slow, obvious twin of the walk back: every document as it was written, kept whole,
    /// against what the records rebuild, for a run of changes of every kind.
    #[tokio::test]
    async fn every_revision_rebuilds_to_the_document_that_was_written() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        let mut written = vec![PolicyDoc::default(), doc(WEB)];
        // A small deterministic generator: the same run every time.
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..60 {
            let pick = next() % 4;
            let weight = (next() % 100) as f64;
            let applied = g
                .change(None, "alice", &format!("change {i}"), |d| {
                    let web = &mut d.services[0];
                    match pick {
                        0 => {
                            web.split = Some(SplitDoc {
                                weights: BTreeMap::from([("v2".to_owned(), weight)]),
                                by: None,
                                salt: None,
                                sticky_cookie: None,
                            })
                        }
                        1 => web.split = None,
                        2 => {
                            web.versions.insert(format!("v{}", 3 + i), "canary".into());
                        }
                        _ => {
                            let extra: Vec<String> = web
                                .versions
                                .keys()
                                .filter(|v| *v != "v1" && *v != "v2")
                                .cloned()
                                .collect();
                            for v in extra.into_iter().take(2) {
                                web.versions.remove(&v);
                            }
                        }
                    }
                    Ok(())
                })
                .await
                .unwrap();
            if !applied.unchanged {
                assert_eq!(applied.revision as usize, written.len());
                written.push(applied.doc);
            }
        }
        assert!(written.len() > 40, "{} revisions", written.len());
        for revision in 1..written.len() {
            let entry = g.history_entry(revision as u64).await.unwrap();
            assert_eq!(entry.after, written[revision], "after revision {revision}");
            assert_eq!(
                entry.before,
                written[revision - 1],
                "before revision {revision}"
            );
        }
    }

    /// Records written before `undo` existed hold both documents: they are read as they are, and
    /// newer ones walk back to them.
    #[tokio::test]
    async fn records_with_whole_documents_are_read_as_they_are() {
        let store = TestStore::new();
        let old = doc(WEB);
        let json = serde_json::to_string(&old).unwrap();
        let legacy = json!({"revision": 1, "time": "2026-01-01T00:00:00.000Z",
            "actor": "config", "summary": "policy from the config file",
            "before": {"services": []}, "after": old});
        let keep = HistoryRetention::default();
        store
            .save_policy_recorded(&json, 0, &legacy.to_string(), keep)
            .await
            .unwrap();
        let g = gateway(&store, Some(&old), TIMEOUT).await;
        let applied = g
            .change(None, "alice", "add v3", |d| {
                d.services[0].versions.insert("v3".into(), "canary".into());
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(applied.revision, 2);
        let first = g.history_entry(1).await.unwrap();
        assert_eq!(
            (first.before, first.after),
            (PolicyDoc::default(), old.clone())
        );
        let second = g.history_entry(2).await.unwrap();
        assert_eq!((second.before, second.after), (old, applied.doc));
        let (page, next) = g.history_page(None, 10).await.unwrap();
        let summaries: Vec<&str> = page.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries, ["add v3", "policy from the config file"]);
        assert_eq!(next, None);
    }

    /// A revision written without a record (by something else than graygate) ends the walk: the
    /// revisions after it rebuild, the ones before are refused naming it.
    #[tokio::test]
    async fn a_revision_without_a_record_is_named() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        let add = |name: &'static str| {
            move |d: &mut PolicyDoc| -> Result<(), super::super::ChangeError> {
                d.services[0].versions.insert(name.into(), "canary".into());
                Ok(())
            }
        };
        g.change(None, "alice", "add v3", add("v3")).await.unwrap();
        let (_, current) = g.current_doc().await.unwrap();
        let mut by_hand = current.clone();
        by_hand.services[0]
            .versions
            .insert("v4".into(), "canary".into());
        let json = serde_json::to_string(&by_hand).unwrap();
        assert_eq!(store.save_policy(&json, Some(2)).await.unwrap(), 3);
        g.change(None, "alice", "add v5", add("v5")).await.unwrap();

        let fourth = g.history_entry(4).await.unwrap();
        assert_eq!(fourth.before, by_hand);
        let e = g.history_entry(2).await.unwrap_err();
        assert!(
            matches!(
                e,
                HistoryError::Broken {
                    revision: 2,
                    missing: 3
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "revision 2 cannot be rebuilt: revision 3 was written without a history record (not through graygate), and revisions older than it cannot be rebuilt from the current policy"
        );
        let e = g.history_entry(3).await.unwrap_err();
        assert!(
            matches!(e, HistoryError::NotInHistory { revision: 3, .. }),
            "{e:?}"
        );
        let e = g.history_entry(9).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "revision 9 is not in the history (the history keeps the newest 1000 changes, at most 64.0 MiB of records)"
        );
    }

    /// Pages follow each other without a gap or a repeat, and the last has no next.
    #[tokio::test]
    async fn pages_follow_each_other() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        for i in 0..6 {
            g.change(None, "alice", &format!("add v{}", i + 3), |d| {
                d.services[0]
                    .versions
                    .insert(format!("v{}", i + 3), "canary".into());
                Ok(())
            })
            .await
            .unwrap();
        }
        let (page, next) = g.history_page(None, 3).await.unwrap();
        let revisions: Vec<u64> = page.iter().map(|c| c.revision).collect();
        assert_eq!((revisions, next), (vec![7, 6, 5], Some(5)));
        let (page, next) = g.history_page(Some(5), 3).await.unwrap();
        let revisions: Vec<u64> = page.iter().map(|c| c.revision).collect();
        assert_eq!((revisions, next), (vec![4, 3, 2], Some(2)));
        let (page, next) = g.history_page(Some(2), 3).await.unwrap();
        let revisions: Vec<u64> = page.iter().map(|c| c.revision).collect();
        assert_eq!((revisions, next), (vec![1], None));
        // Exactly a page left: no next either.
        let (page, next) = g.history_page(Some(4), 3).await.unwrap();
        assert_eq!((page.len(), next), (3, None));
        assert!(page.iter().all(|c| c.bytes > 0 && !c.actor.is_empty()));
        let (page, next) = g.history_page(None, 0).await.unwrap();
        assert_eq!((page.len(), next), (0, None));
    }

    #[test]
    fn a_record_starts_with_its_revision_and_holds_only_the_reverse_patch() {
        let before: PolicyDoc = serde_json::from_value(json!({"services": []})).unwrap();
        let after: PolicyDoc = serde_json::from_value(json!({"services": [{"name": "web",
            "stable": "v1", "versions": {"v1": "a"}}]}))
        .unwrap();
        let record = Record::new(7, "alice", "add web", &before, &after);
        let text = record.to_json();
        assert!(text.starts_with(r#"{"revision":7,"#), "{text}");
        assert!(
            !text.contains("\"before\"") && !text.contains("\"after\""),
            "{text}"
        );
        // The patch takes `after` back to `before`.
        let mut doc = serde_json::to_value(&after).unwrap();
        json_patch::patch(&mut doc, record.undo.as_ref().unwrap()).unwrap();
        assert_eq!(doc, serde_json::to_value(&before).unwrap());
        // A record read back is the record written.
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), record);
    }

    #[test]
    fn the_retention_in_words() {
        assert_eq!(
            kept_words(HistoryRetention::default()),
            "the history keeps the newest 1000 changes, at most 64.0 MiB of records"
        );
    }
}
