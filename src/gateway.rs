//! The live policy: the glue between the store, the pure policy core and the data plane.
//!
//! The running policy is an `Arc<Policy>` in an [`ArcSwap`]: a request loads the snapshot once and
//! finishes on it even if a change lands meanwhile; a change compiles the new document first and
//! swaps only if it is valid, so a rejected change leaves the running policy untouched.
//!
//! Changes arrive by push (the store's change notifications) and, as a safety net against a
//! missed notification, by a periodic reload that compares revisions.

use crate::policy::{self, Evaluation, LookupAnswer, Lookups, Policy, PolicyDoc, RequestFacts};
use crate::proxy::{RouteChoice, Router};
use crate::store::{Change, Store, StoreError};
use arc_swap::ArcSwap;
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
}

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
                None => tracing::warn!("no policy in the store or the config: every request gets 404 until one is set"),
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
    /// that does not compile changes nothing.
    pub async fn apply(&self, doc: &PolicyDoc) -> Result<u64, GatewayError> {
        let compiled = self.compile(doc)?;
        let json = serde_json::to_string(doc).expect("a policy document always serializes");
        let revision = self.store.save_policy(&json, None).await?;
        self.install(compiled, revision);
        tracing::info!(revision, "policy applied");
        Ok(revision)
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
