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

use crate::policy::edit::EditError;
use crate::policy::{self, Evaluation, LookupAnswer, Lookups, Policy, PolicyDoc, RequestFacts};
use crate::proxy::{RouteChoice, Router};
use crate::store::{Change, Store, StoreError};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast::error::RecvError;

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
    store: Arc<dyn Store>,
    /// Upstream names, in the order of the data plane's upstream table: a compiled policy refers
    /// to upstreams by index into this list.
    upstreams: Vec<String>,
    /// How long a request waits for a store lookup before it is decided as if the store were down.
    lookup_timeout: Duration,
    /// The config's policy, when the store could not be read at start: written to the store by
    /// the first reload that finds the store answering and empty.
    pending_seed: std::sync::Mutex<Option<PolicyDoc>>,
    /// Requests routed to each version since start, for the admin API's status: rebuilt (keeping
    /// the counts of versions that stay) whenever a policy is installed, so that the request path
    /// only loads a snapshot and bumps an atomic.
    traffic: ArcSwap<TrafficTable>,
}

/// service -> version -> requests routed there.
type TrafficTable = HashMap<Arc<str>, HashMap<Arc<str>, Arc<AtomicU64>>>;

/// How many times [`Gateway::change`] retries an edit whose write lost a race against another
/// writer (only when the caller did not name the revision it expects).
const CHANGE_ATTEMPTS: usize = 5;

impl Gateway {
    /// Loads the stored policy. When the store holds none, `seed` (the config's policy) is written
    /// to it first; with neither, the policy is empty and every request gets 404 until one is set.
    pub async fn start(
        store: Arc<dyn Store>,
        upstreams: Vec<String>,
        seed: Option<&PolicyDoc>,
        lookup_timeout: Duration,
    ) -> Result<Arc<Self>, GatewayError> {
        let names: Vec<&str> = upstreams.iter().map(String::as_str).collect();
        let empty = policy::compile(&PolicyDoc::default(), &names)?;
        let gateway = Arc::new(Gateway {
            policy: ArcSwap::from_pointee(empty),
            revision: AtomicU64::new(0),
            last_reload_ms: AtomicU64::new(0),
            store,
            upstreams,
            lookup_timeout,
            pending_seed: std::sync::Mutex::new(None),
            traffic: ArcSwap::from_pointee(TrafficTable::new()),
        });
        match gateway.store.load_policy().await {
            Ok(Some(stored)) => {
                let compiled = gateway.compile_json(stored.revision, &stored.json)?;
                gateway.install(compiled, stored.revision);
                if seed.is_some() {
                    tracing::info!(
                        revision = stored.revision,
                        "the store holds a policy: it is used; the config's policy only seeds an empty store (send SIGHUP to apply it)"
                    );
                }
            }
            Ok(None) => match seed {
                Some(doc) => {
                    gateway.apply(doc).await?;
                }
                None => tracing::warn!(
                    "no policy in the store or the config: every request gets 404 until one is set"
                ),
            },
            // A shared store that is down must not keep graygate from serving: run on the
            // config's policy and write it once the store answers (see `reload`).
            Err(e) => match seed {
                Some(doc) => {
                    tracing::warn!(error = %e, "store unavailable at start: serving the config's policy until it answers");
                    gateway.install(gateway.compile(doc)?, 0);
                    *gateway.pending_seed.lock().expect("seed lock") = Some(doc.clone());
                }
                None => return Err(e.into()),
            },
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

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Validates `doc`, stores it as the next revision and makes it the running policy. A document
    /// that does not compile changes nothing. Recorded in the history as made by `config`.
    pub async fn apply(&self, doc: &PolicyDoc) -> Result<u64, GatewayError> {
        let replace = |current: &mut PolicyDoc| {
            current.clone_from(doc);
            Ok(())
        };
        match self
            .change(None, "config", "policy from the config file", replace)
            .await
        {
            Ok(applied) => {
                tracing::info!(revision = applied.revision, "policy applied");
                Ok(applied.revision)
            }
            Err(ChangeError::Rejected(e)) => Err(GatewayError::Rejected(e)),
            Err(ChangeError::Store(e)) => Err(GatewayError::Store(e)),
            Err(e) => Err(GatewayError::Store(StoreError::Unavailable {
                store: self.store.kind(),
                detail: e.to_string(),
            })),
        }
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
    /// The edit is pure and may run more than once; what it returns comes back in [`Applied`].
    pub async fn change<T>(
        &self,
        expected: Option<u64>,
        actor: &str,
        summary: &str,
        mut edit: impl FnMut(&mut PolicyDoc) -> Result<T, ChangeError>,
    ) -> Result<Applied<T>, ChangeError> {
        let mut last_conflict = None;
        for _ in 0..CHANGE_ATTEMPTS {
            let (current, before) = self.current_doc().await?;
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
            let compiled = self.compile(&after)?;
            let next = current + 1;
            let record = HistoryEntry {
                revision: next,
                time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                actor: actor.to_string(),
                summary: summary.to_string(),
                before,
                after,
            };
            let json =
                serde_json::to_string(&record.after).expect("a policy document always serializes");
            let record_json =
                serde_json::to_string(&record).expect("a history entry always serializes");
            match self
                .store
                .save_policy_recorded(&json, current, &record_json)
                .await
            {
                Ok(revision) => {
                    if revision >= self.revision() {
                        self.install(compiled, revision);
                    }
                    tracing::info!(revision, actor, summary, "policy changed");
                    return Ok(Applied {
                        revision,
                        value,
                        doc: record.after,
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
    pub async fn current_doc(&self) -> Result<(u64, PolicyDoc), ChangeError> {
        match self.store.load_policy().await.map_err(ChangeError::Store)? {
            Some(stored) => match serde_json::from_str::<PolicyDoc>(&stored.json) {
                Ok(doc) => Ok((stored.revision, doc)),
                Err(e) => {
                    tracing::warn!(revision = stored.revision, error = %e, "the stored policy does not parse: this change starts from the running policy");
                    Ok((stored.revision, self.policy().doc().clone()))
                }
            },
            None => {
                let seed = self.pending_seed.lock().expect("seed lock").clone();
                Ok((0, seed.unwrap_or_default()))
            }
        }
    }

    /// The newest `limit` changes, newest first, from the store's history. Records that do not
    /// parse (written by another version of graygate) are skipped.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let records = self.store.load_history(limit).await?;
        Ok(records
            .iter()
            .filter_map(|r| match serde_json::from_str(r) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a history record that does not parse");
                    None
                }
            })
            .collect())
    }

    /// Upstream names, in the order of the data plane's upstream table (a [`policy::Decision`]'s
    /// `upstream` indexes this).
    pub fn upstream_names(&self) -> &[String] {
        &self.upstreams
    }

    /// Requests routed to each version of each service since start (this instance only), for
    /// every version of the running policy.
    pub fn traffic(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.traffic
            .load()
            .iter()
            .map(|(service, versions)| {
                let counts = versions
                    .iter()
                    .map(|(v, n)| (v.to_string(), n.load(Ordering::Relaxed)))
                    .collect();
                (service.to_string(), counts)
            })
            .collect()
    }

    /// Counts one request routed to `version` of `service`.
    fn count(&self, service: &str, version: &str) {
        if let Some(n) = self
            .traffic
            .load()
            .get(service)
            .and_then(|versions| versions.get(version))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A counter for every version of `doc`, reusing the counters of versions that stay.
    fn rebuild_traffic(&self, doc: &PolicyDoc) {
        let old = self.traffic.load();
        let mut table = TrafficTable::new();
        for s in &doc.services {
            let service: Arc<str> = Arc::from(s.name.as_str());
            let known = old.get(&service);
            let versions = s
                .versions
                .keys()
                .map(|v| {
                    let counter = known
                        .and_then(|k| k.get(v.as_str()))
                        .cloned()
                        .unwrap_or_default();
                    (Arc::from(v.as_str()), counter)
                })
                .collect();
            table.insert(service, versions);
        }
        self.traffic.store(Arc::new(table));
    }

    /// Reloads the stored policy if its revision differs from the running one. A stored document
    /// that does not compile is logged once and the running policy stays.
    pub async fn reload(&self) -> Result<bool, GatewayError> {
        let Some(stored) = self.store.load_policy().await? else {
            let seed = self.pending_seed.lock().expect("seed lock").take();
            if let Some(doc) = seed {
                self.apply(&doc).await?;
                return Ok(true);
            }
            return Ok(false);
        };
        self.pending_seed.lock().expect("seed lock").take();
        if stored.revision == self.revision() {
            return Ok(false);
        }
        let compiled = self.compile_json(stored.revision, &stored.json)?;
        self.install(compiled, stored.revision);
        tracing::info!(revision = stored.revision, "policy reloaded from the store");
        Ok(true)
    }

    /// Follows store changes (push) and reloads every `interval` (safety net) until the task is
    /// dropped.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let gateway = Arc::clone(self);
        let mut changes = gateway.store.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rejected_revision = 0;
            loop {
                let reload = tokio::select! {
                    change = changes.recv() => match change {
                        Ok(Change::Policy { revision }) => revision != gateway.revision(),
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
                    Err(GatewayError::BadStoredPolicy { revision, detail })
                        if revision != rejected_revision =>
                    {
                        rejected_revision = revision;
                        tracing::error!(revision, %detail, "stored policy rejected; the running policy stays");
                    }
                    Err(GatewayError::BadStoredPolicy { .. }) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "policy reload failed; retrying at the next tick")
                    }
                }
            }
        })
    }

    fn compile(&self, doc: &PolicyDoc) -> Result<Policy, policy::CompileError> {
        let names: Vec<&str> = self.upstreams.iter().map(String::as_str).collect();
        policy::compile(doc, &names)
    }

    fn compile_json(&self, revision: u64, json: &str) -> Result<Policy, GatewayError> {
        let doc: PolicyDoc =
            serde_json::from_str(json).map_err(|e| GatewayError::BadStoredPolicy {
                revision,
                detail: e.to_string(),
            })?;
        self.compile(&doc)
            .map_err(|e| GatewayError::BadStoredPolicy {
                revision,
                detail: e.to_string(),
            })
    }

    fn install(&self, policy: Policy, revision: u64) {
        self.rebuild_traffic(policy.doc());
        self.policy.store(Arc::new(policy));
        self.revision.store(revision, Ordering::Release);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis().max(1) as u64);
        self.last_reload_ms.store(now_ms, Ordering::Release);
    }

    /// Decides for a request: evaluates on one snapshot, fetching store values the rules need
    /// (each at most once, each bounded by the lookup timeout).
    pub async fn decide(
        &self,
        policy: &Policy,
        facts: &RequestFacts<'_>,
    ) -> Option<policy::Decision> {
        let mut known = RequestLookups {
            store: &*self.store,
            fetched: Vec::new(),
            give_up: false,
        };
        // Each round fetches one new key; a policy has few lookups per request, so this bound is
        // only a guard against a loop.
        for _ in 0..16 {
            match policy.evaluate(facts, &known) {
                Evaluation::Decided(d) => return Some(d),
                Evaluation::NoRoute => return None,
                Evaluation::NeedLookup { list, key } => {
                    let answer = match tokio::time::timeout(
                        self.lookup_timeout,
                        self.store.lookup(&list, &key),
                    )
                    .await
                    {
                        Ok(Ok(Some(v))) => LookupAnswer::Value(v),
                        Ok(Ok(None)) => LookupAnswer::Absent,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %list, "lookup failed; deciding as if absent");
                            LookupAnswer::Unavailable
                        }
                        Err(_) => LookupAnswer::Unavailable,
                    };
                    known.fetched.push((list, key, answer));
                }
            }
        }
        known.give_up = true;
        match policy.evaluate(facts, &known) {
            Evaluation::Decided(d) => Some(d),
            _ => None,
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
    #[error(transparent)]
    Store(StoreError),
}

/// A change that was applied.
#[derive(Debug, Clone)]
pub struct Applied<T> {
    /// The revision it became.
    pub revision: u64,
    /// What the edit returned.
    pub value: T,
    /// The document now stored and running.
    pub doc: PolicyDoc,
}

/// One applied change, as kept in the store's history; a wire type of the admin API too.
pub use crate::api::HistoryEntry;

/// Store values for one request: what was fetched for it, else what the store knows in memory.
struct RequestLookups<'a> {
    store: &'a dyn Store,
    fetched: Vec<(Arc<str>, String, LookupAnswer)>,
    /// Set after too many rounds: whatever is still unknown counts as unavailable.
    give_up: bool,
}

impl Lookups for RequestLookups<'_> {
    fn get(&self, list: &str, key: &str) -> LookupAnswer {
        if let Some((_, _, answer)) = self
            .fetched
            .iter()
            .find(|(l, k, _)| &**l == list && k == key)
        {
            return answer.clone();
        }
        match self.store.lookup_local(list, key) {
            Some(Some(v)) => LookupAnswer::Value(v),
            Some(None) => LookupAnswer::Absent,
            None if self.give_up => LookupAnswer::Unavailable,
            None => LookupAnswer::Unknown,
        }
    }
}

impl Router for Gateway {
    fn route<'a>(
        &'a self,
        facts: RequestFacts<'a>,
    ) -> Pin<Box<dyn Future<Output = Option<RouteChoice>> + Send + 'a>> {
        Box::pin(async move {
            let policy = self.policy.load_full();
            let d = self.decide(&policy, &facts).await?;
            self.count(&d.service, &d.version);
            Some(RouteChoice {
                upstream: d.upstream,
                stable_upstream: d.stable_upstream,
                reason: d.reason.to_string(),
                route: d.route,
                service: d.service,
                version: d.version,
                stable_version: d.stable_version,
            })
        })
    }
}
