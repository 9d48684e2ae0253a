//! The live policy: the glue between the store, the pure policy core and the data plane.
//!
//! The running policy is an `Arc<Policy>` in an [`ArcSwap`]: a request loads the snapshot once and
//! finishes on it even if a change lands meanwhile; a change compiles the new document first and
//! swaps only if it is valid, so a rejected change leaves the running policy untouched.
//!
//! Changes arrive by push (the store's change notifications) and, as a safety net against a
//! missed notification, by a periodic reload that compares revisions.
//!
//! Every change made here (the admin API, SIGHUP, seeding an empty store) goes through
//! [`Gateway::change`]: edit a copy of the stored document, compile it, write it with its history
//! record in one conditional store write, install it. It also counts the requests routed to each
//! version ([`Gateway::traffic`]) for the admin API's status.
//!
//! The upstream names a policy compiles against can change too: a config reload that adds or
//! removes upstreams swaps them ([`Gateway::set_upstreams`]) together with the data plane's
//! table, and recompiles the running policy against them. One change, reload or swap runs at a
//! time on an instance, so that nothing compiled against the old names is installed after them.
//! The policy may define upstreams of its own (shared by every instance): a revision that
//! changes them rebuilds the table before it is installed (`upstreams`).
//!
//! # Files
//! - `mod.rs`: the [`Gateway`] itself: start, the running snapshot, install, the upstream
//!   names, and the watcher that reloads store changes.
//! - `seed`: the config's policy: it seeds the store, and is applied again only when it changed
//!   since it was last applied (never over an active rollout unless forced); whether the running
//!   policy differs from it.
//! - `change`: every change of the policy ([`Gateway::change`], [`Gateway::apply`]), the
//!   document it starts from, and the history it records.
//! - `decide`: the data plane's question ([`crate::proxy::Router`]): evaluate on one snapshot,
//!   fetching the store values the rules need, each bounded by the lookup timeout.
//! - `traffic`: the per-version counters (requests, errors, latency) of the admin API's status
//!   and of the rollout analysis.
//! - `rollouts`: the rollout driver: publishes this instance's counters, and on the instance
//!   holding the store lease, judges every rollout's window and moves it.
//! - `upstreams`: the table an instance runs, its config file's upstreams overlaid by the
//!   policy's ([`EffectiveUpstreams`]): rebuilt with stable indexes when a revision or a config
//!   reload changes either side; a revision whose upstreams this instance cannot build is not
//!   applied ([`GatewayError::UnbuildableUpstream`]).
//! - `snapshot`: the last-known-good snapshot file: the last policy this instance applied,
//!   written atomically after every install, read at start when the store is down.
//! - `fleet`: this instance among others on one store: a store behind (restore or refuse),
//!   divergence, the heartbeat record and the fleet view.

mod change;
mod decide;
mod fleet;
mod history;
mod rollouts;
mod seed;
pub mod snapshot;
#[cfg(test)]
mod testing;
mod traffic;
mod upstreams;

pub use change::{Applied, ChangeError, HistoryEntry};
pub use fleet::{
    Divergence, FleetOptions, OnStoreBehind, PolicySource, StoreSeen, DEFAULT_HEARTBEAT,
    FLEET_PREFIX,
};
pub use history::{kept_words, HistoryError};
pub use rollouts::{now_ms, DriverConfig, RolloutsHandle, VerdictTally, ACTOR};
pub use seed::ConfigPolicy;
pub use traffic::FiguresTable;
pub use upstreams::{EffectiveUpstream, EffectiveUpstreams, TableChange, UpstreamOrigin};

use crate::policy::edit::EditError;
use crate::policy::{self, Policy, PolicyDoc};
use crate::proxy::MirrorTable;
use crate::store::{Change, ErrorChain, HistoryRetention, Store, StoreError};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast::error::RecvError;
use traffic::Traffic;

/// Why a policy could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored document is not valid JSON for a policy.
    #[error("stored policy revision {revision} is not a valid policy document: {detail}")]
    BadStoredPolicy { revision: u64, detail: String },
    /// The document does not compile; nothing was applied.
    #[error("policy rejected: {0}")]
    Rejected(#[from] policy::CompileError),
    /// A lost write race: other writers changed the stored policy every time this change was
    /// about to be written. Nothing was applied; applying it again starts from their revision.
    #[error("the policy changed {attempts} times while this change was written (now at revision {actual}): nothing was applied, retry")]
    LostRace { attempts: usize, actual: u64 },
    /// An edit of the document refused the change. [`Gateway::apply`] replaces the whole
    /// document and never raises it; it is here so that every [`ChangeError`] converts.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// New upstream names that the running policy does not compile against (it uses an
    /// upstream they remove): nothing was swapped.
    #[error("the running policy (revision {revision}) uses an upstream the new config removes ({source}): change the policy first; the upstreams stay as they were")]
    UpstreamInUse {
        revision: u64,
        source: policy::CompileError,
    },
    /// A revision whose shared upstreams this instance cannot build (a server line that does
    /// not parse, a CA file this instance lacks): not applied here; the running policy
    /// (`running`) and its upstream table stay.
    #[error("revision {revision} is not applied on this instance: upstream `{}` cannot be built here: {source}; the running policy (revision {running}) and its upstreams stay", .source.upstream)]
    UnbuildableUpstream {
        revision: u64,
        running: u64,
        source: crate::config::SharedUpstreamError,
    },
    /// The store holds an older revision than this instance applied (or none), and this
    /// instance does not restore it by itself (`on_store_behind = "refuse"`).
    #[error("{}", fleet::behind_message(*stored, *applied))]
    StoreBehind { stored: u64, applied: u64 },
    /// An operator asked to restore a store that is not behind this instance.
    #[error("the store is at revision {stored}, not behind revision {applied} that this instance routes with: nothing to restore")]
    NotBehind { stored: u64, applied: u64 },
}

/// The upstreams a gateway starts with: the data plane's table, which it rebuilds when the
/// policy's upstreams change ([`EffectiveUpstreams`]), or only the names of a fixed table.
pub enum UpstreamSource {
    /// Names only, in table order: policies compile against them; the policy's own upstreams
    /// cannot be built.
    Names(Vec<String>),
    /// The table, rebuilt with the policy's upstreams.
    Table(Arc<EffectiveUpstreams>),
}

impl From<Vec<String>> for UpstreamSource {
    fn from(names: Vec<String>) -> Self {
        UpstreamSource::Names(names)
    }
}

impl From<Arc<EffectiveUpstreams>> for UpstreamSource {
    fn from(table: Arc<EffectiveUpstreams>) -> Self {
        UpstreamSource::Table(table)
    }
}

impl From<ChangeError> for GatewayError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Edit(e) => GatewayError::Edit(e),
            ChangeError::Rejected(e) => GatewayError::Rejected(e),
            // The caller named a revision and another writer got there first: one lost race.
            ChangeError::Stale { actual, .. } => GatewayError::LostRace {
                attempts: 1,
                actual,
            },
            ChangeError::Busy { attempts, actual } => GatewayError::LostRace { attempts, actual },
            ChangeError::Store(e) => GatewayError::Store(e),
            ChangeError::StoreBehind { stored, applied } => {
                GatewayError::StoreBehind { stored, applied }
            }
        }
    }
}

/// The live policy and the store it comes from.
pub struct Gateway {
    /// The snapshot every new request evaluates against.
    policy: ArcSwap<Policy>,
    /// Revision of the stored document `policy` was compiled from (0: none stored).
    revision: AtomicU64,
    /// When a policy was last installed, in ms since the Unix epoch (0: never), for the
    /// metrics: an operator checks that a change has landed everywhere.
    last_reload_ms: AtomicU64,
    /// Where the policy, its history and the lists live.
    store: Arc<dyn Store>,
    /// How much history every change leaves in the store (`[history]`): the store prunes to it
    /// in the write that adds a record.
    history_retention: HistoryRetention,
    /// Upstream names, in the order of the data plane's upstream table: a compiled policy refers
    /// to upstreams by index into this list (an empty name: a retired slot). Swapped by a config
    /// reload ([`Gateway::set_upstreams`]) and by a revision that changes the policy's upstreams.
    upstreams: ArcSwap<Vec<String>>,
    /// The data plane's table, rebuilt when the policy's or the file's upstreams change
    /// (`upstreams`); `None`: upstream names only.
    table: Option<Arc<EffectiveUpstreams>>,
    /// Held by every change, store reload and upstream swap of this instance while it compiles
    /// and installs, so that a policy compiled against old upstream names is never installed
    /// after new ones (the store's conditional write orders changes between instances).
    changing: tokio::sync::Mutex<()>,
    /// How long a request waits for a store lookup before it is decided as if the store were down.
    lookup_timeout: Duration,
    /// The config's policy, when the store could not be read at start: written to the store by
    /// the first reload that finds the store answering and empty.
    pending_seed: std::sync::Mutex<Option<PolicyDoc>>,
    /// Requests routed to each version since start, for the admin API's status: rebuilt (keeping
    /// the counts of versions that stay) whenever a policy is installed.
    traffic: Traffic,
    /// The config file's policy and whether the running one differs from it (see `seed`).
    config: seed::ConfigState,
    /// Set while this process hands its store over to a new graygate process (an upgrade): the
    /// admin API refuses changes meanwhile, asking to retry (see [`crate::upgrade`]).
    handing_over: std::sync::atomic::AtomicBool,
    /// The running policy's mirrors, for the data plane ([`crate::proxy::Router::mirror`]):
    /// rebuilt with the policy, keeping the in-flight counts of the mirrors that stay.
    mirrors: ArcSwap<MirrorTable>,
    /// This instance among the others on the store: its id, snapshot, divergence, the store's
    /// state as seen from here (see `fleet`).
    fleet: fleet::FleetState,
}

impl Gateway {
    /// Loads the stored policy. When the store holds none, `seed` (the config's policy) is written
    /// to it first; with neither, the policy is empty and every request gets 404 until one is set.
    pub async fn start(
        store: Arc<dyn Store>,
        upstreams: impl Into<UpstreamSource>,
        seed: Option<&PolicyDoc>,
        lookup_timeout: Duration,
        history_retention: HistoryRetention,
    ) -> Result<Arc<Self>, GatewayError> {
        let options = FleetOptions::default();
        Self::start_in_fleet(
            store,
            upstreams,
            seed,
            lookup_timeout,
            history_retention,
            &options,
        )
        .await
    }

    /// [`Gateway::start`] with a last-known-good snapshot and the fleet settings: when the store
    /// cannot be read, the snapshot (if there is one) runs instead of the config's policy, and a
    /// store that answers with an older revision than the snapshot's, or none, is handled as
    /// `options.on_store_behind` says.
    pub async fn start_in_fleet(
        store: Arc<dyn Store>,
        upstreams: impl Into<UpstreamSource>,
        seed: Option<&PolicyDoc>,
        lookup_timeout: Duration,
        history_retention: HistoryRetention,
        options: &FleetOptions,
    ) -> Result<Arc<Self>, GatewayError> {
        let (upstreams, table) = match upstreams.into() {
            UpstreamSource::Names(names) => (names, None),
            UpstreamSource::Table(t) => (t.live().current().policy_names(), Some(t)),
        };
        let names: Vec<&str> = upstreams.iter().map(String::as_str).collect();
        let empty = policy::compile(&PolicyDoc::default(), &names)?;
        let gateway = Arc::new(Gateway {
            policy: ArcSwap::from_pointee(empty),
            revision: AtomicU64::new(0),
            last_reload_ms: AtomicU64::new(0),
            store,
            history_retention,
            upstreams: ArcSwap::from_pointee(upstreams),
            table,
            changing: tokio::sync::Mutex::new(()),
            lookup_timeout,
            pending_seed: std::sync::Mutex::new(None),
            traffic: Traffic::new(),
            config: seed::ConfigState::new(seed),
            handing_over: std::sync::atomic::AtomicBool::new(false),
            mirrors: ArcSwap::from_pointee(MirrorTable::default()),
            fleet: fleet::FleetState::new(options, rollouts::instance_id()),
        });
        let snapshot = match Self::read_snapshot(options.snapshot.as_ref())
            .filter(|snap| snap.revision > 0)
        {
            Some(snap) => match gateway.prepare(&snap.policy).await {
                Ok(prepared) => Some((snap, prepared)),
                Err(e) => {
                    let e = e.stored(snap.revision, 0);
                    tracing::error!(revision = snap.revision, error = %e, "the last-known-good snapshot cannot run on this instance (its upstreams): ignored");
                    None
                }
            },
            None => None,
        };
        let loaded = gateway.store.load_policy().await;
        // A store behind the snapshot (empty, or older): start from the snapshot, then
        // restore or refuse as configured.
        let behind = match (&loaded, &snapshot) {
            (Ok(stored), Some((snap, _))) => {
                stored.as_ref().map_or(0, |s| s.revision) < snap.revision
            }
            _ => false,
        };
        if behind {
            let stored = loaded
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map_or(0, |s| s.revision);
            let (snap, prepared) = snapshot.expect("checked above");
            gateway.install_prepared(prepared, snap.revision);
            gateway.fleet.set_source(PolicySource::Snapshot);
            {
                let _one_at_a_time = gateway.changing.lock().await;
                match gateway.store_behind(stored).await {
                    Ok(_) | Err(GatewayError::StoreBehind { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %ErrorChain(&e), "cannot restore the snapshot into the store at start; retrying at the next reload")
                    }
                }
            }
            return Ok(gateway);
        }
        match loaded {
            Ok(Some(stored)) => match gateway.prepare_json(stored.revision, &stored.json).await {
                Ok(prepared) => {
                    gateway.install_prepared(prepared, stored.revision);
                    if let Some(doc) = seed {
                        gateway.seen_at_start(doc, stored.revision).await;
                    }
                }
                // Divergence at start: this instance cannot apply the stored revision. Run the
                // snapshot if there is one, else the config's policy, and say so; the store is
                // left as it is, and a revision that applies clears it.
                Err(e) => {
                    let fallback = match (snapshot, seed) {
                        (Some((snap, prepared)), _) => {
                            Some((prepared, snap.revision, PolicySource::Snapshot))
                        }
                        (None, Some(doc)) => gateway
                            .prepare(doc)
                            .await
                            .ok()
                            .map(|prepared| (prepared, 0, PolicySource::Config)),
                        (None, None) => None,
                    };
                    let Some((prepared, revision, source)) = fallback else {
                        return Err(e);
                    };
                    gateway.install_prepared(prepared, revision);
                    gateway.fleet.set_source(source);
                    gateway.diverge(stored.revision, &reason_of(&e));
                }
            },
            Ok(None) => match seed {
                Some(doc) => {
                    let applied = gateway.apply(doc).await?;
                    gateway.record_applied(doc, applied.revision).await;
                }
                None => tracing::warn!(
                    "no policy in the store or the config: every request gets 404 until one is set"
                ),
            },
            // A shared store that is down must not keep graygate from serving: run on the
            // config's policy and write it once the store answers (see `reload`).
            Err(e) => {
                gateway.fleet.see_store(StoreSeen::Degraded {
                    error: ErrorChain(&e).to_string(),
                });
                match (snapshot, seed) {
                    (Some((snap, prepared)), _) => {
                        let age = snap.age();
                        tracing::warn!(
                            error = %ErrorChain(&e),
                            revision = snap.revision,
                            file = %options.snapshot.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                            age = %humantime::format_duration(Duration::from_secs(age.as_secs())),
                            written_by = %snap.instance,
                            "store unavailable at start: serving the last-known-good snapshot until it answers"
                        );
                        gateway.install_prepared(prepared, snap.revision);
                        gateway.fleet.set_source(PolicySource::Snapshot);
                        if let Some(writer) = &gateway.fleet.snapshot {
                            writer.started_from(&snap);
                        }
                    }
                    (None, Some(doc)) => {
                        tracing::warn!(error = %ErrorChain(&e), "store unavailable at start: serving the config's policy until it answers");
                        let prepared = gateway.prepare(doc).await.map_err(|e| e.stored(0, 0))?;
                        gateway.install_prepared(prepared, 0);
                        gateway.fleet.set_source(PolicySource::Config);
                        *gateway.pending_seed.lock().expect("seed lock") = Some(doc.clone());
                    }
                    (None, None) => return Err(e.into()),
                }
            }
        }
        Ok(gateway)
    }

    /// The current policy snapshot.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The revision of the running policy (0: none stored).
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// When the running policy was installed (at start, by `apply` or by a reload); `None`
    /// while no policy was ever installed.
    pub fn last_reload(&self) -> Option<SystemTime> {
        match self.last_reload_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// The store the policy comes from; the admin API reads lists, history and health through it.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Upstream names, in the order of the data plane's upstream table (a [`policy::Decision`]'s
    /// `upstream` indexes this; an empty name is a retired slot).
    pub fn upstream_names(&self) -> Arc<Vec<String>> {
        self.upstreams.load_full()
    }

    /// Swaps the upstream names a policy compiles against, after a config reload changed the
    /// upstreams: the running policy is compiled against `names` first and, if it compiles,
    /// `install_table` swaps the data plane's table, the names are swapped and the recompiled
    /// policy is installed (same revision). A running policy that uses an upstream `names` no
    /// longer has refuses the swap ([`GatewayError::UpstreamInUse`]) and nothing changes.
    ///
    /// `names` keep the index of every upstream that stays (see [`crate::proxy::LiveUpstreams`]);
    /// the table is swapped before the policy, so that no request meets a policy that refers to
    /// an index its table does not have yet.
    pub async fn set_upstreams(
        &self,
        names: Vec<String>,
        install_table: impl FnOnce(),
    ) -> Result<(), GatewayError> {
        {
            let _one_at_a_time = self.changing.lock().await;
            let running = self.policy();
            let revision = self.revision();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let compiled = policy::compile(running.doc(), &refs)
                .map_err(|source| GatewayError::UpstreamInUse { revision, source })?;
            install_table();
            self.upstreams.store(Arc::new(names));
            self.install(compiled, revision);
        }
        // A diverged instance may have just been given the upstream it lacked: try the store's
        // revision now rather than at the next tick.
        if self.divergence().is_some() {
            let _ = self.reload().await;
        }
        Ok(())
    }

    /// Requests routed to each version of each service since start (this instance only), for
    /// every version of the running policy.
    pub fn traffic(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.traffic.snapshot()
    }

    /// Every version's figures since start (this instance only): requests, errors, latencies.
    pub fn figures(&self) -> FiguresTable {
        self.traffic.figures()
    }

    /// Every version's requests that stable answered instead, since start (this instance only).
    pub fn fallbacks(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.traffic.fallbacks()
    }

    /// Reloads the stored policy if its revision differs from the running one. A stored document
    /// that does not compile is logged once and the running policy stays.
    ///
    /// A store behind this instance (an older revision than it applied, or none) is restored or
    /// refused as configured (see `fleet`); a stored revision this instance cannot apply makes
    /// it diverged ([`Gateway::diverge`]).
    pub async fn reload(&self) -> Result<bool, GatewayError> {
        let one_at_a_time = self.changing.lock().await;
        let loaded = match self.store.load_policy().await {
            Ok(loaded) => loaded,
            Err(e) => {
                self.fleet.see_store(StoreSeen::Degraded {
                    error: ErrorChain(&e).to_string(),
                });
                return Err(e.into());
            }
        };
        let applied = self.revision();
        let stored_revision = loaded.as_ref().map_or(0, |s| s.revision);
        if applied > 0 && stored_revision < applied {
            return self.store_behind(stored_revision).await;
        }
        self.fleet.see_store(StoreSeen::Healthy);
        let Some(stored) = loaded else {
            drop(one_at_a_time);
            let seed = self.pending_seed.lock().expect("seed lock").take();
            if let Some(doc) = seed {
                let applied = self.apply(&doc).await?;
                self.record_applied(&doc, applied.revision).await;
                return Ok(true);
            }
            return Ok(false);
        };
        self.pending_seed.lock().expect("seed lock").take();
        if stored.revision == applied {
            if self.fleet.source() != PolicySource::Store {
                tracing::info!(
                    revision = applied,
                    "the store answers with the revision this instance runs: caught up"
                );
                self.fleet.set_source(PolicySource::Store);
                self.fleet.beat.notify_one();
            }
            self.converge(applied);
            return Ok(false);
        }
        let prepared = match self.prepare_json(stored.revision, &stored.json).await {
            Ok(prepared) => prepared,
            Err(e) => {
                self.diverge(stored.revision, &reason_of(&e));
                return Err(e);
            }
        };
        self.install_prepared(prepared, stored.revision);
        self.fleet.set_source(PolicySource::Store);
        self.converge(stored.revision);
        tracing::info!(revision = stored.revision, "policy reloaded from the store");
        Ok(true)
    }

    /// Marks this process as handing its store over to a new graygate process (or not any
    /// more, when the upgrade failed): the admin API refuses changes while it is set.
    pub fn set_handing_over(&self, on: bool) {
        self.handing_over
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this process is handing its store over ([`Gateway::set_handing_over`]).
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Follows store changes (push) and reloads every `interval` (safety net) until the task is
    /// dropped.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let gateway = Arc::clone(self);
        let mut changes = gateway.store.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let reload = tokio::select! {
                    change = changes.recv() => match change {
                        Ok(Change::Policy { revision }) => revision != gateway.revision(),
                        // Notifications may have been missed (a reconnect, maybe to a server
                        // that restarted empty): look at once rather than at the next tick.
                        Ok(Change::Reset) => true,
                        Ok(_) => false,
                        Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => return,
                    },
                    _ = tick.tick() => true,
                };
                if !reload {
                    continue;
                }
                match gateway.reload().await {
                    Ok(_) => {}
                    // Logged once per revision by `diverge`, and once per episode by
                    // `store_behind`.
                    Err(
                        GatewayError::BadStoredPolicy { .. }
                        | GatewayError::UnbuildableUpstream { .. }
                        | GatewayError::StoreBehind { .. },
                    ) => {}
                    Err(e) => {
                        tracing::debug!(error = %ErrorChain(&e), "policy reload failed; retrying at the next tick")
                    }
                }
            }
        })
    }

    fn compile(&self, doc: &PolicyDoc) -> Result<Policy, policy::CompileError> {
        let upstreams = self.upstreams.load();
        let names: Vec<&str> = upstreams.iter().map(String::as_str).collect();
        policy::compile(doc, &names)
    }

    fn install(&self, policy: Policy, revision: u64) {
        self.traffic.rebuild(policy.doc());
        let upstreams = self.upstreams.load();
        let names: Vec<&str> = upstreams.iter().map(String::as_str).collect();
        let mirrors = policy::mirror::mirrors(policy.doc(), &names);
        let table = MirrorTable::build(mirrors, &self.mirrors.load());
        self.mirrors.store(Arc::new(table));
        self.config.compare(policy.doc(), revision);
        self.policy.store(Arc::new(policy));
        self.revision.store(revision, Ordering::Release);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis().max(1) as u64);
        self.last_reload_ms.store(now_ms, Ordering::Release);
        self.offer_snapshot(revision);
    }
}

/// The reason a stored revision cannot be applied, for the divergence report.
fn reason_of(e: &GatewayError) -> String {
    match e {
        GatewayError::BadStoredPolicy { detail, .. } => detail.clone(),
        other => ErrorChain(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{doc, gateway, TestStore, WEB};
    use super::*;
    use std::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn with_v3() -> PolicyDoc {
        let mut d = doc(WEB);
        d.services[0].versions.insert("v3".into(), "canary".into());
        d
    }

    #[tokio::test]
    async fn start_seeds_an_empty_store_and_prefers_a_stored_policy() {
        let store = TestStore::new();
        let first = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        assert_eq!(first.revision(), 1);
        assert!(first.last_reload().is_some());
        assert_eq!(*first.policy().doc(), doc(WEB));

        // A restart with another policy in the config: the stored one wins.
        let again = gateway(&store, Some(&with_v3()), TIMEOUT).await;
        assert_eq!(again.revision(), 1);
        assert_eq!(*again.policy().doc(), doc(WEB));

        // Nothing stored and nothing to seed: empty, never installed.
        let empty = gateway(&TestStore::new(), None, TIMEOUT).await;
        assert_eq!(empty.revision(), 0);
        assert_eq!(empty.last_reload(), None);
        assert!(empty.policy().doc().services.is_empty());
    }

    #[tokio::test]
    async fn reload_installs_a_newer_revision_and_keeps_running_on_a_bad_one() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        assert!(!g.reload().await.unwrap(), "nothing new");

        let json = serde_json::to_string(&with_v3()).unwrap();
        store.save_policy(&json, Some(1)).await.unwrap();
        assert!(g.reload().await.unwrap());
        assert_eq!(g.revision(), 2);
        assert_eq!(*g.policy().doc(), with_v3());
        // The traffic table follows the installed policy.
        assert!(g.traffic()["web"].contains_key("v3"));

        store.save_policy("{\"routes\": 1}", Some(2)).await.unwrap();
        let bad = g.reload().await.unwrap_err();
        assert!(
            matches!(bad, GatewayError::BadStoredPolicy { revision: 3, .. }),
            "{bad:?}"
        );
        assert!(
            bad.to_string()
                .starts_with("stored policy revision 3 is not a valid policy document: "),
            "{bad}"
        );
        assert_eq!(g.revision(), 2);
        assert_eq!(*g.policy().doc(), with_v3());
    }

    #[tokio::test]
    async fn upstream_names_swap_with_the_table_unless_the_running_policy_uses_a_removed_one() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();

        // An upstream added: the table is swapped, the running policy recompiled (same
        // revision), and changes may name it.
        let swapped = std::sync::atomic::AtomicBool::new(false);
        g.set_upstreams(names(&["stable", "canary", "next"]), || {
            swapped.store(true, Ordering::SeqCst)
        })
        .await
        .unwrap();
        assert!(swapped.load(Ordering::SeqCst));
        assert_eq!(g.revision(), 1);
        assert_eq!(*g.upstream_names(), names(&["stable", "canary", "next"]));
        g.change(None, "alice", "v3 on next", |d| {
            d.services[0].versions.insert("v3".into(), "next".into());
            Ok(())
        })
        .await
        .unwrap();

        // Removing it while the running policy uses it: refused, nothing swapped.
        let e = g
            .set_upstreams(names(&["stable", "canary", ""]), || {
                panic!("the table was swapped")
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the running policy (revision 2) uses an upstream the new config removes \
             (services[0].versions.v3: unknown upstream `next` (configured upstreams: stable, \
             canary)): change the policy first; the upstreams stay as they were"
        );
        assert_eq!(*g.upstream_names(), names(&["stable", "canary", "next"]));
        assert!(g.policy().doc().services[0].versions.contains_key("v3"));
    }

    #[tokio::test]
    async fn the_watcher_follows_store_changes_without_waiting_for_the_interval() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB)), TIMEOUT).await;
        let watcher = g.spawn_watcher(Duration::from_secs(3600));
        let json = serde_json::to_string(&with_v3()).unwrap();
        store.save_policy(&json, Some(1)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.revision() != 2 {
            assert!(Instant::now() < deadline, "the change never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*g.policy().doc(), with_v3());
        watcher.abort();
    }
}
