//! Every change of the policy: edit a copy of the stored document, validate it as a whole, write
//! it with its history record in one conditional store write, install it.
//!
//! The admin API, SIGHUP and the seeding of an empty store all come through
//! [`Gateway::change`], so that they share one rule for concurrent writers: the store's
//! conditional write decides who wins, a loser without an `If-Match` makes its edit again on the
//! newer document, and a loser with one is told that its copy is stale.
//!
//! A change that changes nothing (a second rollback, the stored policy put back as it is) writes
//! nothing: no revision, no history record, and [`Applied::unchanged`] says so. The history then
//! only holds changes, and an operator never has to tell an empty revision from a real one.

use super::history::Record;
use super::{Gateway, GatewayError};
use crate::policy::edit::EditError;
use crate::policy::{self, PolicyDoc};
use crate::store::StoreError;

/// How many times [`Gateway::change`] makes an edit whose write lost a race against another
/// writer (only when the caller did not name the revision it expects).
const CHANGE_ATTEMPTS: usize = 5;

impl Gateway {
    /// Validates `doc`, stores it as the next revision and makes it the running policy. A document
    /// that does not compile changes nothing. Recorded in the history as made by `config`.
    /// A document equal to the stored one writes nothing ([`Applied::unchanged`]).
    pub async fn apply(&self, doc: &PolicyDoc) -> Result<Applied<()>, GatewayError> {
        let replace = |current: &mut PolicyDoc| {
            current.clone_from(doc);
            Ok(())
        };
        // A lost race stays a lost race (`GatewayError::LostRace`), not "store unavailable".
        let applied = self
            .change(None, "config", "policy from the config file", replace)
            .await?;
        if applied.unchanged {
            tracing::info!(
                revision = applied.revision,
                "policy applied: the store holds it already (no new revision)"
            );
        } else {
            tracing::info!(revision = applied.revision, "policy applied");
        }
        Ok(applied)
    }

    /// Makes one change of the policy: `edit` changes a copy of the stored document, the result is
    /// validated as a whole (compiled), written as the next revision together with its history
    /// record, and installed. Every policy change (admin API, SIGHUP, seeding) goes through here.
    ///
    /// The store's conditional write is the serialization point: the write only happens if the
    /// store is still at the revision the edit started from, so two admins (or two instances
    /// sharing Redis) never interleave half-updates. With `expected` (the client's `If-Match`),
    /// a store at another revision refuses the change with [`ChangeError::Stale`]; without it, an
    /// edit that lost a race is made again on the newer document (a few times at most).
    ///
    /// An edit that leaves the stored document as it is writes nothing: the answer is the stored
    /// revision with [`Applied::unchanged`] set (no revision, no history record, nothing
    /// installed). Only a store that holds no policy yet, or one that does not parse, is written
    /// whatever the edit did.
    ///
    /// The edit is pure and may run more than once; what it returns comes back in [`Applied`].
    pub async fn change<T>(
        &self,
        expected: Option<u64>,
        actor: &str,
        summary: &str,
        mut edit: impl FnMut(&mut PolicyDoc) -> Result<T, ChangeError>,
    ) -> Result<Applied<T>, ChangeError> {
        let _one_at_a_time = self.changing.lock().await;
        let mut last_conflict = None;
        for _ in 0..CHANGE_ATTEMPTS {
            let Stored {
                revision: current,
                doc: before,
                as_stored,
            } = self.stored().await?;
            if self.settle_behind(current).await? {
                // Restored (or another instance did): the edit starts from the store again.
                continue;
            }
            if let Some(expected) = expected {
                if expected != current {
                    return Err(ChangeError::Stale {
                        expected,
                        actual: current,
                    });
                }
            }
            let mut after = before.clone();
            let value = edit(&mut after)?;
            if as_stored && after == before {
                tracing::debug!(revision = current, actor, summary, "policy unchanged");
                return Ok(Applied {
                    revision: current,
                    value,
                    doc: after,
                    unchanged: true,
                });
            }
            // Validated against this instance's upstream table. Failing that, the change may
            // still be the fleet's to make: an upstream this instance cannot build that the
            // stored policy already had (`unbuildable_here`), or names this instance lacks that
            // the stored document already uses or the edited one defines (another instance has
            // them). Such a change is written, and this instance diverges from it rather than
            // refusing every change from now on.
            let (compiled, not_here) = match self.prepare(&after).await {
                Ok(prepared) => (Some(prepared), None),
                Err(super::upstreams::Unbuildable::Compile(here)) => {
                    let names = self.names_with(&before, &after);
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    policy::compile(&after, &refs)?;
                    (None, Some(here.to_string()))
                }
                Err(super::upstreams::Unbuildable::Upstream(e)) => {
                    let reason = format!("upstream `{}` cannot be built here: {e}", e.upstream);
                    let failure = super::upstreams::Unbuildable::Upstream(e);
                    self.unbuildable_here(&before, &after, failure)?;
                    (None, Some(reason))
                }
            };
            let next = current + 1;
            let record = Record::new(next, actor, summary, &before, &after).to_json();
            let json = serde_json::to_string(&after).expect("a policy document always serializes");
            match self
                .store
                .save_policy_recorded(&json, current, &record, self.history_retention)
                .await
            {
                Ok(revision) => {
                    match (compiled, not_here) {
                        (Some(prepared), _) => {
                            if revision >= self.revision() {
                                self.install_prepared(prepared, revision);
                                self.fleet.set_source(super::PolicySource::Store);
                                self.converge(revision);
                            }
                        }
                        (None, Some(here)) => self.diverge(revision, &here),
                        (None, None) => {}
                    }
                    tracing::info!(revision, actor, summary, "policy changed");
                    return Ok(Applied {
                        revision,
                        value,
                        doc: after,
                        unchanged: false,
                    });
                }
                Err(StoreError::Conflict { actual, .. }) => match expected {
                    Some(expected) => return Err(ChangeError::Stale { expected, actual }),
                    None => last_conflict = Some(actual),
                },
                Err(e) => return Err(ChangeError::Store(e)),
            }
        }
        Err(ChangeError::Busy {
            attempts: CHANGE_ATTEMPTS,
            actual: last_conflict.unwrap_or_default(),
        })
    }

    /// The stored revision and document: what a change starts from and what the admin API shows.
    /// A stored document that does not parse (written by something else) is replaced by the
    /// running one; an empty store that still owes the config's policy shows that.
    ///
    /// A store behind this instance (it lost its data) is restored first, or, with
    /// `on_store_behind = "refuse"`, the read is refused naming the condition: the admin API
    /// never shows an empty or older policy than the one that routes.
    pub async fn current_doc(&self) -> Result<(u64, PolicyDoc), ChangeError> {
        let stored = self.stored().await?;
        if self.revision() > 0 && stored.revision < self.revision() {
            let _one_at_a_time = self.changing.lock().await;
            let again = self.stored().await?;
            if !self.settle_behind(again.revision).await? {
                return Ok((again.revision, again.doc));
            }
            let restored = self.stored().await?;
            return Ok((restored.revision, restored.doc));
        }
        Ok((stored.revision, stored.doc))
    }

    /// With the change lock held: when the store is at `current`, older than the revision this
    /// instance applied, restores it (true: read it again) or refuses; false: not behind.
    async fn settle_behind(&self, current: u64) -> Result<bool, ChangeError> {
        let applied = self.revision();
        if applied == 0 || current >= applied {
            return Ok(false);
        }
        match self.store_behind(current).await {
            Ok(_) => Ok(true),
            Err(GatewayError::StoreBehind { stored, applied }) => {
                Err(ChangeError::StoreBehind { stored, applied })
            }
            Err(GatewayError::Store(e)) => Err(ChangeError::Store(e)),
            Err(other) => Err(ChangeError::Store(crate::store::StoreError::unavailable(
                self.store.kind(),
                other.to_string(),
            ))),
        }
    }

    /// This instance's upstream names, those the stored document `before` already uses, and
    /// those the edited one `after` defines, for validating a change that another instance's
    /// upstreams may serve.
    fn names_with(&self, before: &PolicyDoc, after: &PolicyDoc) -> Vec<String> {
        let mut names: Vec<String> = self
            .upstream_names()
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        let used = before.services.iter().flat_map(|s| s.versions.values());
        for upstream in used.chain(after.upstreams.keys()) {
            if !names.contains(upstream) {
                names.push(upstream.clone());
            }
        }
        names
    }

    /// [`Gateway::current_doc`], saying whether the document is the stored one.
    async fn stored(&self) -> Result<Stored, ChangeError> {
        match self.store.load_policy().await.map_err(ChangeError::Store)? {
            Some(stored) => match serde_json::from_str::<PolicyDoc>(&stored.json) {
                Ok(doc) => Ok(Stored {
                    revision: stored.revision,
                    doc,
                    as_stored: true,
                }),
                Err(e) => {
                    tracing::warn!(revision = stored.revision, error = %e, "the stored policy does not parse: this change starts from the running policy");
                    Ok(Stored {
                        revision: stored.revision,
                        doc: self.policy().doc().clone(),
                        as_stored: false,
                    })
                }
            },
            None => {
                let seed = self.pending_seed.lock().expect("seed lock").clone();
                Ok(Stored {
                    revision: 0,
                    doc: seed.unwrap_or_default(),
                    as_stored: false,
                })
            }
        }
    }
}

/// Why a [`Gateway::change`] was not applied. Nothing changed in every case.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The edit itself was refused (unknown service, a name taken, ...).
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The edited document does not compile.
    #[error("policy rejected: {0}")]
    Rejected(#[from] policy::CompileError),
    /// The caller expected another revision than the stored one.
    #[error("the policy is at revision {actual}, not {expected}: read it again and retry")]
    Stale { expected: u64, actual: u64 },
    /// Other writers kept changing the policy while this edit was retried.
    #[error("the policy changed {attempts} times while this change was made (now at revision {actual}); try again")]
    Busy { attempts: usize, actual: u64 },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(StoreError),
    /// The store holds an older revision than this instance applied (it lost its data) and
    /// this instance does not restore it by itself.
    #[error("{}", super::fleet::behind_message(*stored, *applied))]
    StoreBehind { stored: u64, applied: u64 },
}

/// What a change starts from: the stored revision and its document.
struct Stored {
    revision: u64,
    doc: PolicyDoc,
    /// False when nothing is stored yet (the document is the config's policy owed to the store,
    /// or empty) or the stored one does not parse (the document is the running one): a change
    /// is then written even if it leaves the document as it is.
    as_stored: bool,
}

/// A change that was applied, or found to change nothing.
#[derive(Debug, Clone)]
pub struct Applied<T> {
    /// The revision it became; for an unchanged document, the stored revision it left as it was.
    pub revision: u64,
    /// What the edit returned.
    pub value: T,
    /// The document now stored and running.
    pub doc: PolicyDoc,
    /// True when the edited document was the stored one: nothing was written (no new revision,
    /// no history record).
    pub unchanged: bool,
}

/// One applied change, as kept in the store's history; a wire type of the admin API too.
pub use crate::api::HistoryEntry;

#[cfg(test)]
mod tests {
    use super::super::testing::{doc, full_history, gateway, TestStore, WEB};
    use super::*;
    use crate::store::Store;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Adds version `v3` (on the canary upstream) to `web`.
    fn add_v3(d: &mut PolicyDoc) -> Result<(), ChangeError> {
        d.services[0].versions.insert("v3".into(), "canary".into());
        Ok(())
    }

    #[tokio::test]
    async fn a_change_is_stored_recorded_and_installed() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        assert_eq!(g.revision(), 1);
        let applied = g.change(None, "alice", "add v3", add_v3).await.unwrap();
        assert_eq!(applied.revision, 2);
        assert_eq!(g.revision(), 2);
        assert!(g.policy().doc().services[0].versions.contains_key("v3"));
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 2);
        let history = full_history(&g, 10).await;
        let actors: Vec<(u64, &str)> = history
            .iter()
            .map(|h| (h.revision, h.actor.as_str()))
            .collect();
        assert_eq!(actors, vec![(2, "alice"), (1, "config")]);
        assert_eq!(history[0].before, doc(WEB));
        assert_eq!(history[0].after, applied.doc);
    }

    #[tokio::test]
    async fn a_change_that_changes_nothing_writes_no_revision() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        g.change(None, "alice", "add v3", add_v3).await.unwrap();
        let before = g.policy();

        // The same edit again, the stored document put back as it is, and an edit undone
        // within itself: nothing to write.
        let again = g.change(None, "alice", "add v3", add_v3).await.unwrap();
        let stored = g.policy().doc().clone();
        let put_back = g
            .change(Some(2), "alice", "policy replaced", |d| {
                d.clone_from(&stored);
                Ok(())
            })
            .await
            .unwrap();
        let undone = g
            .change(None, "alice", "there and back", |d| {
                d.services[0].stable = "v2".into();
                d.services[0].stable = "v1".into();
                Ok(7)
            })
            .await
            .unwrap();
        for applied in [&again, &put_back] {
            assert!(applied.unchanged);
            assert_eq!(applied.revision, 2);
            assert_eq!(applied.doc, stored);
        }
        assert!(undone.unchanged);
        assert_eq!((undone.revision, undone.value), (2, 7));
        assert_eq!(g.revision(), 2);
        assert!(Arc::ptr_eq(&before, &g.policy()), "nothing was installed");
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 2);
        assert_eq!(full_history(&g, 10).await.len(), 2);
        // A change that does change something is written as before.
        let real = g
            .change(None, "alice", "drop v3", |d| {
                d.services[0].versions.remove("v3");
                Ok(())
            })
            .await
            .unwrap();
        assert!(!real.unchanged);
        assert_eq!(real.revision, 3);

        // The config's policy applied again (SIGHUP with an unchanged file): no revision.
        let same = g.policy().doc().clone();
        let applied = g.apply(&same).await.unwrap();
        assert!(applied.unchanged);
        assert_eq!(applied.revision, 3);
    }

    #[tokio::test]
    async fn an_empty_store_is_written_even_with_an_empty_policy() {
        let store = TestStore::new();
        let g = gateway(&store, None, TIMEOUT).await;
        let applied = g.apply(&PolicyDoc::default()).await.unwrap();
        assert!(!applied.unchanged, "nothing was stored yet");
        assert_eq!(applied.revision, 1);
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 1);
    }

    #[tokio::test]
    async fn a_rejected_change_leaves_the_running_policy_and_revision_untouched() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        let before = g.policy();

        // The document does not compile: the stable version does not exist.
        let broken = g
            .change(None, "alice", "stable v9", |d| {
                d.services[0].stable = "v9".into();
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(broken, ChangeError::Rejected(_)), "{broken:?}");
        assert!(
            broken.to_string().starts_with("policy rejected: "),
            "{broken}"
        );
        // The edit itself refuses.
        let refused = g
            .change(None, "alice", "refused", |_| {
                Err::<(), _>(ChangeError::Edit(EditError::invalid(
                    "name",
                    "no such thing",
                )))
            })
            .await
            .unwrap_err();
        assert!(matches!(refused, ChangeError::Edit(_)), "{refused:?}");

        assert_eq!(g.revision(), 1);
        assert!(
            Arc::ptr_eq(&before, &g.policy()),
            "the snapshot was replaced"
        );
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 1);
        assert_eq!(full_history(&g, 10).await.len(), 1);
    }

    #[tokio::test]
    async fn a_lost_race_is_made_again_on_the_newer_document_without_if_match() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        store.rivals.store(1, Ordering::SeqCst);
        let edits = AtomicUsize::new(0);
        let applied = g
            .change(None, "alice", "add v3", |d| {
                edits.fetch_add(1, Ordering::SeqCst);
                add_v3(d)
            })
            .await
            .unwrap();
        assert_eq!(edits.load(Ordering::SeqCst), 2, "the edit is made again");
        assert_eq!(applied.revision, 3, "after the rival's revision 2");
        assert_eq!(g.revision(), 3);
        let history = full_history(&g, 10).await;
        let actors: Vec<(u64, &str)> = history
            .iter()
            .map(|h| (h.revision, h.actor.as_str()))
            .collect();
        assert_eq!(actors, vec![(3, "alice"), (2, "rival"), (1, "config")]);
        // Made on the rival's document, not on the one the first attempt read.
        assert_eq!(history[0].before, history[1].after);
    }

    #[tokio::test]
    async fn a_lost_race_with_if_match_is_refused_as_stale() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        store.rivals.store(1, Ordering::SeqCst);
        let stale = g
            .change(Some(1), "alice", "add v3", add_v3)
            .await
            .unwrap_err();
        assert!(
            matches!(
                stale,
                ChangeError::Stale {
                    expected: 1,
                    actual: 2
                }
            ),
            "{stale:?}"
        );
        assert_eq!(
            stale.to_string(),
            "the policy is at revision 2, not 1: read it again and retry"
        );
        // Only the rival's write landed; this change was not installed.
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 2);
        assert_eq!(g.revision(), 1);
        assert!(!g.policy().doc().services[0].versions.contains_key("v3"));

        // An If-Match that is already behind is refused before the edit runs.
        let behind = g
            .change(Some(1), "alice", "add v3", |_| -> Result<(), ChangeError> {
                panic!("the edit of a stale change runs")
            })
            .await
            .unwrap_err();
        assert!(matches!(
            behind,
            ChangeError::Stale {
                expected: 1,
                actual: 2
            }
        ));
    }

    #[tokio::test]
    async fn writers_that_keep_winning_make_the_change_busy() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        store.rivals.store(CHANGE_ATTEMPTS, Ordering::SeqCst);
        let busy = g.change(None, "alice", "add v3", add_v3).await.unwrap_err();
        assert!(
            matches!(
                busy,
                ChangeError::Busy {
                    attempts: 5,
                    actual: 6
                }
            ),
            "{busy:?}"
        );
        assert_eq!(
            busy.to_string(),
            "the policy changed 5 times while this change was made (now at revision 6); try again"
        );
    }

    #[tokio::test]
    async fn apply_reports_a_lost_race_as_its_own_error_not_as_a_store_failure() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        store.rivals.store(CHANGE_ATTEMPTS, Ordering::SeqCst);
        let mut next = doc(WEB);
        add_v3(&mut next).unwrap();
        let lost = g.apply(&next).await.unwrap_err();
        assert!(
            matches!(
                lost,
                GatewayError::LostRace {
                    attempts: 5,
                    actual: 6
                }
            ),
            "{lost:?}"
        );
        assert_eq!(
            lost.to_string(),
            "the policy changed 5 times while this change was written (now at revision 6): nothing was applied, retry"
        );
        // Once the others stop, applying again works.
        assert_eq!(g.apply(&next).await.unwrap().revision, 7);
    }

    #[test]
    fn every_change_error_converts_to_a_gateway_error_of_its_kind() {
        let stale: GatewayError = ChangeError::Stale {
            expected: 1,
            actual: 4,
        }
        .into();
        assert!(matches!(
            stale,
            GatewayError::LostRace {
                attempts: 1,
                actual: 4
            }
        ));
        let edit: GatewayError = ChangeError::Edit(EditError::invalid("name", "taken")).into();
        assert!(matches!(edit, GatewayError::Edit(_)));
        let store: GatewayError = ChangeError::Store(StoreError::Conflict {
            expected: 1,
            actual: 2,
        })
        .into();
        assert!(matches!(store, GatewayError::Store(_)));
    }
}
