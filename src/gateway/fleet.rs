//! This instance in a fleet that shares one store: what it knows about the store (healthy,
//! degraded, behind), whether it diverged from the store's revision, its heartbeat record, and
//! putting its last-known-good policy back into a store that lost it.
//!
//! # A store behind
//! A store is *behind* when it holds an older revision than this instance applied, or none at
//! all (a Redis restarted without persistence). graygate never follows it silently: routing
//! would go on from memory while the admin API showed an empty or older policy, and a later
//! reload would seed the config's policy over every runtime change. What it does instead is
//! [`OnStoreBehind`]: by default it writes the policy it runs back AT ITS REVISION
//! ([`Store::restore_policy`], conditional, so that the newest revision in the fleet wins), with
//! a history record that notes the gap; or, configured so, it refuses changes and reports until
//! an operator restores (`graygate ctl fleet restore`).
//!
//! # Divergence
//! An instance that cannot apply a stored revision (it does not parse, or does not compile
//! against this instance's upstreams) keeps routing with the last one it applied and says so at
//! once: one error line per revision, the `graygate_policy_diverged` gauge, `/readyz` not ready,
//! and the fleet view. Every such failure goes through [`Gateway::diverge`]; a later revision
//! that applies clears it.
//!
//! # The heartbeat
//! Every instance writes the record `fleet:<instance id>` ([`crate::api::FleetInstance`]) with a
//! TTL of three heartbeats, every heartbeat and at once after each install, and deletes it at a
//! clean shutdown; `GET /v1/fleet` lists the records, and a change's answer counts the live
//! instances that report its revision.

use super::history::Record;
use super::snapshot::{self, Snapshot, SnapshotStatus, SnapshotWriter};
use super::{Gateway, GatewayError};
use crate::api::{AppliedBy, Diverged, Fleet, FleetInstance, Lagging, SnapshotView};
use crate::store::{ErrorChain, Restore, StoreError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The prefix of the heartbeat records: `fleet:<instance id>`.
pub const FLEET_PREFIX: &str = "fleet:";

/// How often an instance renews its heartbeat record by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// What an instance does when the store holds an older revision than it applied, or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnStoreBehind {
    /// Writes the policy it runs back into the store at its revision (the default): the policy
    /// that routes every request is the one operators last set, so putting it back loses
    /// nothing, while following the empty store would lose every runtime change.
    #[default]
    Reseed,
    /// Writes nothing: keeps routing with the applied policy, reports (log, metric, `/readyz`),
    /// refuses admin changes, until an operator runs `graygate ctl fleet restore`.
    Refuse,
}

/// The fleet settings of [`Gateway::start_in_fleet`] (`[fleet]` in the config).
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Where the last-known-good snapshot lives (`None`: none is kept).
    pub snapshot: Option<PathBuf>,
    pub on_store_behind: OnStoreBehind,
    /// How often the heartbeat record is renewed.
    pub heartbeat: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            snapshot: None,
            on_store_behind: OnStoreBehind::default(),
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

/// Where the running policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The store (or a change made here and written to it).
    Store,
    /// The snapshot, because the store was down at start.
    Snapshot,
    /// The config's policy, owed to a store that was down at start (or nothing at all).
    Config,
}

impl PolicySource {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Store => "store",
            PolicySource::Snapshot => "snapshot",
            PolicySource::Config => "config",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => PolicySource::Snapshot,
            2 => PolicySource::Config,
            _ => PolicySource::Store,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            PolicySource::Store => 0,
            PolicySource::Snapshot => 1,
            PolicySource::Config => 2,
        }
    }
}

/// The store as this instance last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSeen {
    Healthy,
    /// It could not be read.
    Degraded {
        error: String,
    },
    /// It holds revision `stored` (0: none), older than the one this instance applied.
    Behind {
        stored: u64,
    },
}

impl StoreSeen {
    pub fn word(&self) -> &'static str {
        match self {
            StoreSeen::Healthy => "healthy",
            StoreSeen::Degraded { .. } => "degraded",
            StoreSeen::Behind { .. } => "behind",
        }
    }
}

/// A revision this instance cannot apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub revision: u64,
    pub reason: String,
    pub since: SystemTime,
}

/// The fleet side of a [`Gateway`].
pub(super) struct FleetState {
    /// This process's id: the heartbeat record's and the rollout driver's.
    pub(super) instance: String,
    started_at: SystemTime,
    pub(super) snapshot: Option<SnapshotWriter>,
    pub(super) on_store_behind: OnStoreBehind,
    pub(super) heartbeat: Duration,
    /// A [`PolicySource`].
    source: AtomicU8,
    /// The store as last seen, and since when.
    store: Mutex<(StoreSeen, SystemTime)>,
    /// When the store was first seen behind in the current episode (for the restore's timing).
    behind_noticed: Mutex<Option<Instant>>,
    diverged: Mutex<Option<Divergence>>,
    /// The admin API's address and the data plane's, for the heartbeat.
    addresses: Mutex<(Option<String>, Vec<String>)>,
    /// Wakes the heartbeat to write at once (after an install, a divergence).
    pub(super) beat: tokio::sync::Notify,
    /// How many times this instance restored the store.
    restores: AtomicU64,
}

impl FleetState {
    pub(super) fn new(options: &FleetOptions, instance: String) -> Self {
        FleetState {
            instance,
            started_at: SystemTime::now(),
            snapshot: options.snapshot.clone().map(SnapshotWriter::spawn),
            on_store_behind: options.on_store_behind,
            heartbeat: options.heartbeat,
            source: AtomicU8::new(PolicySource::Store.as_u8()),
            store: Mutex::new((StoreSeen::Healthy, SystemTime::now())),
            behind_noticed: Mutex::new(None),
            diverged: Mutex::new(None),
            addresses: Mutex::new((None, Vec::new())),
            beat: tokio::sync::Notify::new(),
            restores: AtomicU64::new(0),
        }
    }

    pub(super) fn set_source(&self, source: PolicySource) {
        self.source.store(source.as_u8(), Ordering::Release);
    }

    pub(super) fn source(&self) -> PolicySource {
        PolicySource::from_u8(self.source.load(Ordering::Acquire))
    }

    /// Records what the store looks like now; logs and wakes the heartbeat when that changed.
    pub(super) fn see_store(&self, seen: StoreSeen) {
        let mut state = lock(&self.store);
        if state.0.word() != seen.word() || state.0 != seen {
            let changed_kind = state.0.word() != seen.word();
            *state = (
                seen,
                if changed_kind {
                    SystemTime::now()
                } else {
                    state.1
                },
            );
            if changed_kind {
                self.beat.notify_one();
            }
        }
        if !matches!(state.0, StoreSeen::Behind { .. }) {
            *lock(&self.behind_noticed) = None;
        }
    }

    fn store_seen(&self) -> (StoreSeen, SystemTime) {
        lock(&self.store).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a change or a read was refused because the store is behind and this instance does not
/// restore it by itself.
pub(super) fn behind_message(stored: u64, applied: u64) -> String {
    let what = if stored == 0 {
        "holds no policy".to_string()
    } else {
        format!("is at revision {stored}")
    };
    format!(
        "the store {what}, older than revision {applied} that this instance routes with (it lost its data, e.g. a Redis restarted without persistence); with `on_store_behind = \"refuse\"` nothing is written until an operator restores it: run `graygate ctl fleet restore` to write revision {applied} back"
    )
}

impl Gateway {
    /// This instance's id (its heartbeat record's and its rollout driver's).
    pub fn instance_id(&self) -> &str {
        &self.fleet.instance
    }

    /// The addresses the heartbeat reports: the admin API's and the data plane's.
    pub fn set_addresses(&self, admin: Option<String>, listen: Vec<String>) {
        *lock(&self.fleet.addresses) = (admin, listen);
        self.fleet.beat.notify_one();
    }

    /// Where the running policy came from.
    pub fn policy_source(&self) -> PolicySource {
        self.fleet.source()
    }

    /// The store as this instance last saw it, and since when.
    pub fn store_seen(&self) -> (StoreSeen, SystemTime) {
        self.fleet.store_seen()
    }

    /// The revision this instance cannot apply, if any.
    pub fn divergence(&self) -> Option<Divergence> {
        lock(&self.fleet.diverged).clone()
    }

    /// The snapshot's state, when one is kept.
    pub fn snapshot_status(&self) -> Option<SnapshotStatus> {
        self.fleet.snapshot.as_ref().map(SnapshotWriter::status)
    }

    /// How many times this instance put its policy back into a store that lost it.
    pub fn restores(&self) -> u64 {
        self.fleet.restores.load(Ordering::Relaxed)
    }

    /// Why this instance is not ready, beyond having no policy: it diverged, or the store is
    /// behind and it does not restore it. `None`: ready.
    pub fn fleet_problem(&self) -> Option<String> {
        if let Some(d) = self.divergence() {
            return Some(format!(
                "diverged: cannot apply the store's revision {} ({}); routing with revision {}",
                d.revision,
                d.reason,
                self.revision()
            ));
        }
        if let (StoreSeen::Behind { stored }, _) = self.store_seen() {
            return Some(behind_message(stored, self.revision()));
        }
        None
    }

    /// The one place every failure to apply a stored revision comes through (it does not parse,
    /// does not compile here, or the data plane cannot build what it names): logged once per
    /// revision, reported by the metric, `/readyz` and the fleet view. The running policy stays.
    pub fn diverge(&self, revision: u64, reason: &str) {
        let mut diverged = lock(&self.fleet.diverged);
        if diverged.as_ref().is_some_and(|d| d.revision == revision) {
            return;
        }
        tracing::error!(
            revision,
            running = self.revision(),
            reason,
            "diverged: this instance cannot apply the store's policy revision; it keeps routing with the one it applied until a revision it can apply arrives"
        );
        *diverged = Some(Divergence {
            revision,
            reason: reason.to_string(),
            since: SystemTime::now(),
        });
        drop(diverged);
        self.fleet.beat.notify_one();
    }

    /// Clears a divergence once revision `revision` is applied.
    pub(super) fn converge(&self, revision: u64) {
        let mut diverged = lock(&self.fleet.diverged);
        if let Some(d) = diverged.as_ref().filter(|d| d.revision <= revision) {
            tracing::info!(
                revision,
                diverged_at = d.revision,
                "converged: this instance applies the store's policy again"
            );
            *diverged = None;
        }
    }

    /// Hands the snapshot writer the policy just installed at `revision`.
    pub(super) fn offer_snapshot(&self, revision: u64) {
        // Revision 0 is the config's policy, never stored: the config has it anyway.
        if let Some(writer) = self.fleet.snapshot.as_ref().filter(|_| revision > 0) {
            writer.offer(Snapshot {
                revision,
                written_at_ms: ms_since_epoch(SystemTime::now()),
                instance: self.fleet.instance.clone(),
                policy: self.policy().doc().clone(),
            });
        }
        self.fleet.beat.notify_one();
    }

    /// The snapshot to start from, if one is kept and can be read; a corrupt or unreadable one
    /// is logged, naming the file, and ignored.
    pub(super) fn read_snapshot(path: Option<&PathBuf>) -> Option<Snapshot> {
        let path = path?;
        match snapshot::read(path) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "the last-known-good snapshot is ignored");
                None
            }
        }
    }

    /// The store holds revision `stored` (0: none), older than the one this instance applied.
    /// Called with the change lock held. Restores it (the default), or refuses and reports.
    pub(super) async fn store_behind(&self, stored: u64) -> Result<bool, GatewayError> {
        let applied = self.revision();
        let first = {
            let mut noticed = lock(&self.fleet.behind_noticed);
            let first = noticed.is_none();
            noticed.get_or_insert_with(Instant::now);
            first
        };
        self.fleet.see_store(StoreSeen::Behind { stored });
        match self.fleet.on_store_behind {
            OnStoreBehind::Refuse => {
                if first {
                    tracing::error!(stored, applied, "{}", behind_message(stored, applied));
                }
                Err(GatewayError::StoreBehind { stored, applied })
            }
            OnStoreBehind::Reseed => self.restore_store(stored, "automatic").await,
        }
    }

    /// Writes the running policy back into the store at its revision, with a history record
    /// that notes the gap. Called with the change lock held.
    pub(super) async fn restore_store(&self, stored: u64, how: &str) -> Result<bool, GatewayError> {
        let applied = self.revision();
        let noticed = lock(&self.fleet.behind_noticed).unwrap_or_else(Instant::now);
        let doc = self.policy().doc().clone();
        let was = if stored == 0 {
            "empty".to_string()
        } else {
            format!("at revision {stored}")
        };
        let summary = format!(
            "restored by instance {} from the policy it applied ({how}): the store was {was}; history records older than this one were lost with it",
            self.fleet.instance
        );
        let record = Record::gap(applied, &self.fleet.instance, &summary, stored, &doc).to_json();
        let json = serde_json::to_string(&doc).expect("a policy document always serializes");
        match self
            .store
            .restore_policy(&json, applied, &record, self.history_retention)
            .await
        {
            Ok(Restore::Restored { from }) => {
                let took = noticed.elapsed();
                tracing::error!(
                    revision = applied,
                    store_was = from,
                    took_ms = took.as_millis() as u64,
                    instance = %self.fleet.instance,
                    "the store had lost the policy ({was}): this instance wrote revision {applied} back, the one it routes with; the revision counter continues from it, and older history records are lost"
                );
                self.fleet.restores.fetch_add(1, Ordering::Relaxed);
                self.fleet.set_source(super::fleet::PolicySource::Store);
                self.fleet.see_store(StoreSeen::Healthy);
                self.after_restore(applied).await;
                Ok(true)
            }
            Ok(Restore::NotBehind { actual }) => {
                tracing::warn!(
                    revision = applied,
                    store_at = actual,
                    "the store is no longer behind (another instance restored it, or a change landed): following it"
                );
                self.fleet.see_store(StoreSeen::Healthy);
                Ok(false)
            }
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "cannot restore the policy into the store; retrying at the next reload");
                Err(e.into())
            }
        }
    }

    /// After a restore: the config-seed record lived in the store too and is gone with it; the
    /// config's policy is recorded as applied at the restored revision (when no record exists),
    /// so that a later reload does not put the config's policy over the restored one.
    async fn after_restore(&self, revision: u64) {
        if let Some(doc) = self.config_file_policy() {
            self.record_applied_if_missing(&doc, revision).await;
        }
        *self.pending_seed.lock().expect("seed lock") = None;
    }

    /// `graygate ctl fleet restore`: writes the running policy back into a store that is behind
    /// it (the explicit command of `on_store_behind = "refuse"`). Returns the store's revision
    /// before, or an error when it is not behind.
    pub async fn restore_now(&self) -> Result<u64, GatewayError> {
        let _one_at_a_time = self.changing.lock().await;
        let applied = self.revision();
        let stored = self.store.load_policy().await?.map_or(0, |s| s.revision);
        if applied == 0 || stored >= applied {
            return Err(GatewayError::NotBehind { stored, applied });
        }
        lock(&self.fleet.behind_noticed).get_or_insert_with(Instant::now);
        self.restore_store(stored, "by an operator").await?;
        Ok(stored)
    }

    /// This instance's heartbeat record.
    pub fn fleet_record(&self) -> FleetInstance {
        let (seen, since) = self.store_seen();
        let (admin, listen) = lock(&self.fleet.addresses).clone();
        FleetInstance {
            id: self.fleet.instance.clone(),
            admin,
            listen,
            version: crate::api::ADMIN_VERSION.to_string(),
            revision: self.revision(),
            source: self.policy_source().as_str().to_string(),
            store: seen.word().to_string(),
            store_since: Some(rfc3339(since)),
            diverged: self.divergence().map(|d| Diverged {
                revision: d.revision,
                reason: d.reason,
                since: rfc3339(d.since),
            }),
            snapshot: self.snapshot_status().map(|s| SnapshotView {
                path: s.path.display().to_string(),
                revision: s.written,
                error: s.error,
                started_from: s.started_from.map(|(r, _)| r),
            }),
            started_at: rfc3339(self.fleet.started_at),
            last_seen: rfc3339(SystemTime::now()),
        }
    }

    /// Writes this instance's heartbeat record now.
    pub async fn beat(&self) -> Result<(), StoreError> {
        let json = serde_json::to_string(&self.fleet_record()).expect("a record serializes");
        let key = format!("{FLEET_PREFIX}{}", self.fleet.instance);
        self.store
            .put_record(&key, &json, Some(self.fleet.heartbeat * 3))
            .await
    }

    /// Renews the heartbeat record every heartbeat, and at once when woken (an install, a
    /// divergence, a change of the store's state), until the task is dropped.
    pub fn spawn_heartbeat(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let gateway = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(gateway.fleet.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = gateway.fleet.beat.notified() => {}
                }
                match gateway.beat().await {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::debug!(error = %ErrorChain(&e), "heartbeat not written; retrying");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// Removes this instance's heartbeat record (a clean shutdown).
    pub async fn leave_fleet(&self) {
        let key = format!("{FLEET_PREFIX}{}", self.fleet.instance);
        let _ = self.store.delete_record(&key).await;
    }

    /// Every live instance, from their heartbeat records (this one's as it is now, even when
    /// its record could not be written).
    /// While the store cannot be read, only this instance is listed, and the store's revision
    /// is `None`.
    pub async fn fleet_view(&self) -> Result<Fleet, StoreError> {
        let records = self.store.records(FLEET_PREFIX).await.unwrap_or_default();
        let mut instances: Vec<FleetInstance> = records
            .iter()
            .filter_map(|(_, json)| serde_json::from_str(json).ok())
            .filter(|i: &FleetInstance| i.id != self.fleet.instance)
            .collect();
        instances.push(self.fleet_record());
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let revision = self
            .store
            .load_policy()
            .await
            .ok()
            .map(|p| p.map_or(0, |p| p.revision));
        Ok(Fleet {
            revision,
            this: self.fleet.instance.clone(),
            instances,
        })
    }

    /// How many live instances report `revision` (or newer); with `wait`, waits until every
    /// live instance does or `wait` runs out.
    pub async fn applied_by(&self, revision: u64, wait: Option<Duration>) -> AppliedBy {
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let counted = match self.fleet_view().await {
                Ok(fleet) => {
                    let lagging: Vec<Lagging> = fleet
                        .instances
                        .iter()
                        .filter(|i| i.revision < revision)
                        .map(|i| Lagging {
                            id: i.id.clone(),
                            revision: i.revision,
                            diverged: i.diverged.as_ref().map(|d| d.reason.clone()),
                        })
                        .collect();
                    AppliedBy {
                        revision,
                        applied: fleet.instances.len() - lagging.len(),
                        live: fleet.instances.len(),
                        lagging,
                        timed_out: false,
                    }
                }
                Err(_) => AppliedBy {
                    revision,
                    applied: usize::from(self.revision() >= revision),
                    live: 1,
                    lagging: Vec::new(),
                    timed_out: false,
                },
            };
            match deadline {
                Some(deadline) if !counted.lagging.is_empty() => {
                    if Instant::now() >= deadline {
                        return AppliedBy {
                            timed_out: true,
                            ..counted
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return counted,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{doc, gateway_in_fleet, TestStore, WEB};
    use super::super::ChangeError;
    use super::*;
    use crate::policy::PolicyDoc;
    use crate::store::Store;

    /// `web` with a version `v3` on the upstream `extra`.
    fn with_extra(d: &mut PolicyDoc) -> Result<(), ChangeError> {
        d.services[0].versions.insert("v3".into(), "extra".into());
        Ok(())
    }

    async fn wait_for_snapshot(g: &Gateway, revision: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.snapshot_status().and_then(|s| s.written) != Some(revision) {
            assert!(Instant::now() < deadline, "the snapshot was never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_instance_that_cannot_apply_a_revision_diverges_keeps_accepting_changes_and_converges(
    ) {
        let store = TestStore::new();
        let options = FleetOptions::default();
        // A has the upstream `extra`; B does not.
        let a = gateway_in_fleet(&store, &["extra"], Some(&doc(WEB)), &options).await;
        let b = gateway_in_fleet(&store, &[], Some(&doc(WEB)), &options).await;
        assert_eq!(b.divergence(), None);
        assert_eq!(b.fleet_problem(), None);

        a.change(None, "alice", "v3 on extra", with_extra)
            .await
            .unwrap();
        let e = b.reload().await.unwrap_err();
        assert!(
            matches!(e, GatewayError::BadStoredPolicy { revision: 2, .. }),
            "{e:?}"
        );
        let d = b.divergence().expect("diverged");
        assert_eq!(d.revision, 2);
        assert!(
            d.reason.contains("unknown upstream `extra`"),
            "{}",
            d.reason
        );
        assert_eq!(b.revision(), 1, "B keeps routing with what it applied");
        let problem = b.fleet_problem().unwrap();
        assert!(
            problem.starts_with("diverged: cannot apply the store's revision 2 ("),
            "{problem}"
        );

        // B's admin API still accepts a change: written, and B stays diverged from it.
        let applied = b
            .change(None, "bob", "v4", |d| {
                d.services[0].versions.insert("v4".into(), "canary".into());
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(applied.revision, 3);
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 3);
        assert_eq!(b.divergence().map(|d| d.revision), Some(3));
        // A change that names an upstream nobody has is still refused.
        let refused = b
            .change(None, "bob", "v5", |d| {
                d.services[0].versions.insert("v5".into(), "nowhere".into());
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(refused, ChangeError::Rejected(_)), "{refused:?}");

        // A revision B can apply arrives: B converges.
        a.change(None, "alice", "drop v3", |d| {
            d.services[0].versions.remove("v3");
            Ok(())
        })
        .await
        .unwrap();
        assert!(b.reload().await.unwrap());
        assert_eq!(b.revision(), 4);
        assert_eq!(b.divergence(), None);
        assert_eq!(b.fleet_problem(), None);
    }

    #[tokio::test]
    async fn a_diverged_instance_given_the_missing_upstream_converges_at_once() {
        let store = TestStore::new();
        let options = FleetOptions::default();
        let a = gateway_in_fleet(&store, &["extra"], Some(&doc(WEB)), &options).await;
        let b = gateway_in_fleet(&store, &[], Some(&doc(WEB)), &options).await;
        a.change(None, "alice", "v3 on extra", with_extra)
            .await
            .unwrap();
        assert!(b.reload().await.is_err());
        assert!(b.divergence().is_some());
        let names = ["stable", "canary", "extra"].map(String::from).to_vec();
        b.set_upstreams(names, || {}).await.unwrap();
        assert_eq!(b.divergence(), None);
        assert_eq!(b.revision(), 2);
    }

    #[tokio::test]
    async fn an_empty_store_is_restored_at_the_snapshots_revision_with_a_gap_in_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let options = FleetOptions {
            snapshot: Some(dir.path().join("snapshot.json")),
            ..FleetOptions::default()
        };
        let first = TestStore::new();
        let a = gateway_in_fleet(&first, &[], Some(&doc(WEB)), &options).await;
        for i in 0..2 {
            a.change(None, "alice", &format!("v{}", i + 3), |d| {
                d.services[0]
                    .versions
                    .insert(format!("v{}", i + 3), "canary".into());
                Ok(())
            })
            .await
            .unwrap();
        }
        wait_for_snapshot(&a, 3).await;
        let routed = a.policy().doc().clone();
        drop(a);

        // The store comes back empty: the instance starts from its snapshot and restores it.
        let empty = TestStore::new();
        let b = gateway_in_fleet(&empty, &[], Some(&doc(WEB)), &options).await;
        assert_eq!(b.revision(), 3);
        assert_eq!(*b.policy().doc(), routed);
        assert_eq!(b.restores(), 1);
        assert_eq!(b.policy_source(), PolicySource::Store);
        let stored = empty.load_policy().await.unwrap().unwrap();
        assert_eq!(stored.revision, 3);
        assert_eq!(
            serde_json::from_str::<PolicyDoc>(&stored.json).unwrap(),
            routed
        );
        let (page, _) = b.history_page(None, 10).await.unwrap();
        assert_eq!(page.len(), 1);
        assert!(
            page[0].summary.contains("the store was empty"),
            "{}",
            page[0].summary
        );
        // The history stops at the gap, clearly.
        assert_eq!(b.history_entry(3).await.unwrap().after, routed);
        let gap = b.history_entry(2).await.unwrap_err().to_string();
        assert!(
            gap.contains("the history before revision 3 is lost"),
            "{gap}"
        );
        // The config's policy does not come back over the restored one on a reload.
        let again = b
            .apply_config_policy(Some(&doc(WEB)), false, "test")
            .await
            .unwrap();
        assert!(
            matches!(again, super::super::ConfigPolicy::NotChanged { .. }),
            "{again:?}"
        );
        // The revision counter continues.
        let next = b.change(None, "bob", "v9", |d| {
            d.services[0].versions.insert("v9".into(), "canary".into());
            Ok(())
        });
        assert_eq!(next.await.unwrap().revision, 4);
    }

    #[tokio::test]
    async fn refusing_a_store_behind_keeps_routing_refuses_changes_until_an_operator_restores() {
        let dir = tempfile::tempdir().unwrap();
        let options = FleetOptions {
            snapshot: Some(dir.path().join("snapshot.json")),
            on_store_behind: OnStoreBehind::Refuse,
            ..FleetOptions::default()
        };
        let first = TestStore::new();
        let a = gateway_in_fleet(&first, &[], Some(&doc(WEB)), &options).await;
        a.change(None, "alice", "v3", |d| {
            d.services[0].versions.insert("v3".into(), "canary".into());
            Ok(())
        })
        .await
        .unwrap();
        wait_for_snapshot(&a, 2).await;
        drop(a);

        let empty = TestStore::new();
        let b = gateway_in_fleet(&empty, &[], Some(&doc(WEB)), &options).await;
        assert_eq!(b.revision(), 2, "routing goes on with the snapshot");
        assert_eq!(empty.load_policy().await.unwrap(), None, "nothing written");
        assert_eq!(b.store_seen().0, StoreSeen::Behind { stored: 0 });
        let problem = b.fleet_problem().unwrap();
        assert!(problem.contains("graygate ctl fleet restore"), "{problem}");
        let refused = b
            .change(None, "bob", "v4", |d| {
                d.services[0].versions.insert("v4".into(), "canary".into());
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(
            refused,
            ChangeError::StoreBehind {
                stored: 0,
                applied: 2
            }
        ));
        assert!(b.current_doc().await.is_err(), "never an empty policy view");
        assert!(matches!(
            b.reload().await,
            Err(GatewayError::StoreBehind { .. })
        ));

        assert_eq!(b.restore_now().await.unwrap(), 0);
        assert_eq!(empty.load_policy().await.unwrap().unwrap().revision, 2);
        assert_eq!(b.fleet_problem(), None);
        assert_eq!(b.current_doc().await.unwrap().0, 2);
        assert!(matches!(
            b.restore_now().await,
            Err(GatewayError::NotBehind {
                stored: 2,
                applied: 2
            })
        ));
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_is_ignored_and_the_config_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        std::fs::write(&path, "not json").unwrap();
        let options = FleetOptions {
            snapshot: Some(path),
            ..FleetOptions::default()
        };
        let g = gateway_in_fleet(&TestStore::new(), &[], Some(&doc(WEB)), &options).await;
        assert_eq!(g.revision(), 1);
        assert_eq!(*g.policy().doc(), doc(WEB));
        wait_for_snapshot(&g, 1).await;
    }
}
