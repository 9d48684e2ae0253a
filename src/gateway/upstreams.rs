//! The upstream table an instance runs: its config file's `[[upstreams]]` (local defaults)
//! overlaid by the shared policy's `upstreams` (a policy upstream replaces a file upstream of the
//! same name; one only in the policy is added).
//!
//! Both sides change while graygate runs: an installed revision may change the policy's
//! upstreams, a config reload the file's. Either way the effective table is rebuilt through the
//! same path ([`crate::proxy::LiveUpstreams::plan`], then `install`): indexes stay stable, an
//! upstream whose definition did not change keeps its pools and health, and the active checks of
//! new and rebuilt upstreams run once before the swap. The table is swapped before the policy
//! that needs it, under the gateway's one-change-at-a-time lock, so that no request meets a
//! policy naming an index its table lacks and no two rebuilds interleave.
//!
//! A revision whose upstreams this instance cannot build (a server line that does not parse, a
//! CA file this instance lacks) is not applied here: [`Gateway::reload`] returns
//! [`GatewayError::UnbuildableUpstream`] naming the upstream and the field, and the instance
//! keeps its previous policy and table. Through the admin API the same definition is refused
//! with 422 before anything is written.

use super::{Gateway, GatewayError};
use crate::config::{shared_upstream, SharedUpstreamError};
use crate::policy::upstreams::UpstreamDoc;
use crate::policy::{self, CompileError, Policy, PolicyDoc};
use crate::proxy::{LiveUpstreams, Timeouts, UpstreamConfig, UpstreamConfigError, UpstreamsPlan};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where an upstream of the effective table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOrigin {
    /// This instance's config file only.
    Config,
    /// The shared policy only.
    Policy,
    /// The shared policy, replacing this instance's config file upstream of the same name.
    PolicyOverConfig,
}

/// The data plane's table and what it is built from. Made once at start and handed to
/// [`Gateway::start`]; the gateway rebuilds it.
pub struct EffectiveUpstreams {
    /// The table requests are sent through.
    live: Arc<LiveUpstreams>,
    /// Relative file paths of policy upstreams (`ca`) are read from here: this instance's
    /// config directory.
    base: PathBuf,
    /// What the running table was built from.
    built: Mutex<Built>,
}

/// The two sides of the running table.
#[derive(Debug, Clone)]
struct Built {
    /// The config file's upstreams (as validated) and the timeouts of every upstream.
    file: Vec<UpstreamConfig>,
    timeouts: Timeouts,
    /// The policy's upstreams, as written in the installed revision.
    shared: BTreeMap<String, UpstreamDoc>,
    /// The same, as built on this instance.
    configs: BTreeMap<String, UpstreamConfig>,
}

/// One upstream of the running table, for the admin API's listing.
#[derive(Debug, Clone)]
pub struct EffectiveUpstream {
    pub name: String,
    pub origin: UpstreamOrigin,
    /// How the data plane runs it (a drained server has weight 0 here).
    pub config: UpstreamConfig,
    /// The policy's definition, for an upstream of the policy.
    pub shared: Option<UpstreamDoc>,
}

/// A table built and checked, not installed yet.
pub(super) struct PlannedTable {
    plan: UpstreamsPlan,
    names: Vec<String>,
    built: Built,
}

/// What an installed config reload changed in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub timeouts_changed: bool,
}

impl TableChange {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.timeouts_changed
    }
}

/// Why a table could not be built.
#[derive(Debug, thiserror::Error)]
pub(super) enum TableError {
    /// An upstream of the policy that this instance cannot build.
    #[error(transparent)]
    Shared(SharedUpstreamError),
    /// The data plane refused the combined table (only a table built in code gets here).
    #[error("{}: {source}", .source.field())]
    Table { source: UpstreamConfigError },
}

/// A document compiled against the table it needs.
pub(super) struct Prepared {
    pub(super) policy: Policy,
    /// The table to install first, when the document changes the policy's upstreams.
    table: Option<PlannedTable>,
}

/// Why a document cannot run on this instance.
#[derive(Debug)]
pub(super) enum Unbuildable {
    Upstream(SharedUpstreamError),
    Compile(CompileError),
}

impl From<Unbuildable> for super::ChangeError {
    /// Through the admin API, both are a 422 about the field at fault.
    fn from(e: Unbuildable) -> Self {
        match e {
            Unbuildable::Compile(e) => super::ChangeError::Rejected(e),
            Unbuildable::Upstream(e) => super::ChangeError::Rejected(CompileError {
                path: e.field,
                message: e.message,
            }),
        }
    }
}

impl Unbuildable {
    /// As the error of installing `revision` from the store (or at start): a document that
    /// does not compile is a bad stored policy; upstreams this instance cannot build are its
    /// own error, naming the upstream and the field.
    pub(super) fn stored(self, revision: u64, running: u64) -> GatewayError {
        match self {
            Unbuildable::Compile(e) => GatewayError::BadStoredPolicy {
                revision,
                detail: e.to_string(),
            },
            Unbuildable::Upstream(source) => GatewayError::UnbuildableUpstream {
                revision,
                running,
                source,
            },
        }
    }
}

impl EffectiveUpstreams {
    /// The table of a starting instance: `live` was built from `file` (the config's upstreams)
    /// with `timeouts`; no policy upstream is in it yet.
    pub fn new(
        live: Arc<LiveUpstreams>,
        file: Vec<UpstreamConfig>,
        timeouts: Timeouts,
        base: PathBuf,
    ) -> Arc<Self> {
        Arc::new(EffectiveUpstreams {
            live,
            base,
            built: Mutex::new(Built {
                file,
                timeouts,
                shared: BTreeMap::new(),
                configs: BTreeMap::new(),
            }),
        })
    }

    /// The table requests are sent through.
    pub fn live(&self) -> &Arc<LiveUpstreams> {
        &self.live
    }

    fn built(&self) -> MutexGuard<'_, Built> {
        self.built.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running table's upstreams, file order first (each replaced by the policy's
    /// definition of the same name), then those only in the policy, by name.
    pub fn upstreams(&self) -> Vec<EffectiveUpstream> {
        let built = self.built().clone();
        let mut list = Vec::new();
        for f in &built.file {
            list.push(match built.configs.get(&f.name) {
                Some(config) => EffectiveUpstream {
                    name: f.name.clone(),
                    origin: UpstreamOrigin::PolicyOverConfig,
                    config: config.clone(),
                    shared: built.shared.get(&f.name).cloned(),
                },
                None => EffectiveUpstream {
                    name: f.name.clone(),
                    origin: UpstreamOrigin::Config,
                    config: f.clone(),
                    shared: None,
                },
            });
        }
        for (name, config) in &built.configs {
            if !built.file.iter().any(|f| f.name == *name) {
                list.push(EffectiveUpstream {
                    name: name.clone(),
                    origin: UpstreamOrigin::Policy,
                    config: config.clone(),
                    shared: built.shared.get(name).cloned(),
                });
            }
        }
        list
    }

    /// Builds the policy's upstreams as this instance can (every one, or the first error).
    fn build_shared(
        &self,
        shared: &BTreeMap<String, UpstreamDoc>,
    ) -> Result<BTreeMap<String, UpstreamConfig>, SharedUpstreamError> {
        shared
            .iter()
            .map(|(name, doc)| Ok((name.clone(), shared_upstream(name, doc, &self.base)?)))
            .collect()
    }

    /// The effective definitions: `file` in its order, each replaced by the policy's upstream
    /// of the same name, then the policy's other upstreams by name.
    fn overlay(
        file: &[UpstreamConfig],
        shared: &BTreeMap<String, UpstreamConfig>,
    ) -> Vec<UpstreamConfig> {
        let mut configs: Vec<UpstreamConfig> = file
            .iter()
            .map(|f| shared.get(&f.name).unwrap_or(f).clone())
            .collect();
        configs.extend(
            shared
                .values()
                .filter(|s| !file.iter().any(|f| f.name == s.name))
                .cloned(),
        );
        configs
    }

    /// Builds the table `shared` (and `file`, when a config reload brings new file upstreams)
    /// describe, and runs the first active checks of its new and rebuilt upstreams. Nothing
    /// changes until [`EffectiveUpstreams::install`].
    async fn plan(
        &self,
        file: Option<(Vec<UpstreamConfig>, Timeouts)>,
        shared: &BTreeMap<String, UpstreamDoc>,
    ) -> Result<PlannedTable, TableError> {
        let mut built = self.built().clone();
        if let Some((configs, timeouts)) = file {
            built.file = configs;
            built.timeouts = timeouts;
        }
        built.shared = shared.clone();
        built.configs = self.build_shared(shared).map_err(TableError::Shared)?;
        let configs = Self::overlay(&built.file, &built.configs);
        let plan = self
            .live
            .plan(&configs, &built.timeouts)
            .map_err(|source| TableError::Table { source })?;
        plan.start_health_checks().await;
        Ok(PlannedTable {
            names: plan.policy_names(),
            plan,
            built,
        })
    }

    /// Makes a planned table the running one.
    fn install(&self, planned: PlannedTable) -> TableChange {
        let change = TableChange {
            added: planned.plan.added.clone(),
            removed: planned.plan.removed.clone(),
            changed: planned.plan.changed.clone(),
            timeouts_changed: planned.plan.timeouts_changed,
        };
        if !planned.plan.is_empty() {
            self.live.install(planned.plan);
        }
        *self.built() = planned.built;
        change
    }

    /// True when `shared` is what the running table was built with.
    fn runs(&self, shared: &BTreeMap<String, UpstreamDoc>) -> bool {
        self.built().shared == *shared
    }
}

impl Gateway {
    /// Compiles `doc` against the upstream table it needs: the running one when its upstreams
    /// are the running ones, else a new table built (and health-checked) now and installed
    /// with it ([`Gateway::install_prepared`]).
    pub(super) async fn prepare(&self, doc: &PolicyDoc) -> Result<Prepared, Unbuildable> {
        let table = match &self.table {
            Some(effective) if !effective.runs(&doc.upstreams) => {
                match effective.plan(None, &doc.upstreams).await {
                    Ok(planned) => Some(planned),
                    Err(TableError::Shared(e)) => return Err(Unbuildable::Upstream(e)),
                    Err(TableError::Table { source: e }) => {
                        return Err(Unbuildable::Compile(CompileError {
                            path: policy::FieldPath::parse(&e.field()),
                            message: e.to_string(),
                        }))
                    }
                }
            }
            _ => None,
        };
        let policy = match &table {
            Some(planned) => {
                let names: Vec<&str> = planned.names.iter().map(String::as_str).collect();
                policy::compile(doc, &names)
            }
            None => self.compile(doc),
        }
        .map_err(Unbuildable::Compile)?;
        Ok(Prepared { policy, table })
    }

    /// Whether a change whose document this instance cannot build may still be written: when
    /// every upstream the edit defines or changes builds here, and the failure is an upstream
    /// the stored policy had already (the fleet runs it; this instance lacks, say, its CA file),
    /// the change is the fleet's to make, and refusing it would leave this instance's admin API
    /// refusing every change. The document must still compile (against the names it would
    /// have). `Err`: refused, as a 422 about the field.
    pub(super) fn unbuildable_here(
        &self,
        before: &PolicyDoc,
        after: &PolicyDoc,
        failure: Unbuildable,
    ) -> Result<(), super::ChangeError> {
        let Unbuildable::Upstream(e) = &failure else {
            return Err(failure.into());
        };
        if before.upstreams.get(&e.upstream) != after.upstreams.get(&e.upstream) {
            return Err(failure.into());
        }
        let Some(effective) = &self.table else {
            return Err(failure.into());
        };
        for (name, doc) in &after.upstreams {
            if before.upstreams.get(name) != Some(doc) {
                shared_upstream(name, doc, &effective.base)
                    .map_err(|e| super::ChangeError::from(Unbuildable::Upstream(e)))?;
            }
        }
        let current = self.upstream_names();
        let mut names: Vec<&str> = current.iter().map(String::as_str).collect();
        names.extend(
            after
                .upstreams
                .keys()
                .map(String::as_str)
                .filter(|n| !current.iter().any(|c| c == n)),
        );
        policy::compile(after, &names).map_err(super::ChangeError::Rejected)?;
        tracing::warn!(upstream = %e.upstream, field = %e.field, detail = %e.message, "a change made through this instance is written for the fleet, but this instance cannot build an upstream of the policy");
        Ok(())
    }

    /// Installs a prepared policy: its table first (then the names it compiled against), then
    /// the policy.
    pub(super) fn install_prepared(&self, prepared: Prepared, revision: u64) {
        if let (Some(planned), Some(effective)) = (prepared.table, &self.table) {
            let names = planned.names.clone();
            let change = effective.install(planned);
            self.upstreams.store(Arc::new(names));
            if !change.is_empty() {
                tracing::info!(
                    revision,
                    added = ?change.added,
                    removed = ?change.removed,
                    changed = ?change.changed,
                    "upstreams of the policy applied"
                );
            }
        }
        self.install(prepared.policy, revision);
    }

    /// [`Gateway::prepare`] of a stored document.
    pub(super) async fn prepare_json(
        &self,
        revision: u64,
        json: &str,
    ) -> Result<Prepared, GatewayError> {
        let doc: PolicyDoc =
            serde_json::from_str(json).map_err(|e| GatewayError::BadStoredPolicy {
                revision,
                detail: e.to_string(),
            })?;
        self.prepare(&doc)
            .await
            .map_err(|e| e.stored(revision, self.revision()))
    }

    /// The running upstream table and what it is built from; `None` for a gateway started
    /// with upstream names only (tests).
    pub fn upstream_table(&self) -> Option<&Arc<EffectiveUpstreams>> {
        self.table.as_ref()
    }

    /// Applies a reloaded config file's upstreams (and their timeouts): the table is rebuilt
    /// from them overlaid by the running policy's, the running policy is compiled against it
    /// and both are installed (same revision). A running policy that uses an upstream the new
    /// file removes (and the policy does not define) refuses the swap
    /// ([`GatewayError::UpstreamInUse`]) and nothing changes.
    pub async fn set_file_upstreams(
        &self,
        configs: Vec<UpstreamConfig>,
        timeouts: Timeouts,
    ) -> Result<TableChange, GatewayError> {
        let Some(effective) = &self.table else {
            return Ok(TableChange::default());
        };
        let _one_at_a_time = self.changing.lock().await;
        let running = self.policy();
        let revision = self.revision();
        let planned = effective
            .plan(Some((configs, timeouts)), &running.doc().upstreams)
            .await
            .map_err(|e| match e {
                TableError::Shared(source) => GatewayError::UnbuildableUpstream {
                    revision,
                    running: revision,
                    source,
                },
                TableError::Table { source: e } => GatewayError::Rejected(CompileError {
                    path: policy::FieldPath::parse(&e.field()),
                    message: e.to_string(),
                }),
            })?;
        if planned.plan.is_empty() {
            // Nothing runs differently (the file's changes are all under policy upstreams).
            return Ok(effective.install(planned));
        }
        let names: Vec<&str> = planned.names.iter().map(String::as_str).collect();
        let compiled = policy::compile(running.doc(), &names)
            .map_err(|source| GatewayError::UpstreamInUse { revision, source })?;
        let names = planned.names.clone();
        let change = effective.install(planned);
        self.upstreams.store(Arc::new(names));
        self.install(compiled, revision);
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{doc, TestStore, WEB};
    use super::*;
    use crate::policy::upstreams::ServerDoc;
    use crate::store::{HistoryRetention, Store};
    use std::time::Duration;

    fn file_upstream(name: &str, servers: &[&str]) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            ..UpstreamConfig::default()
        }
    }

    fn shared(servers: &[&str]) -> UpstreamDoc {
        UpstreamDoc {
            servers: servers.iter().map(|s| ServerDoc::new(*s)).collect(),
            ..UpstreamDoc::default()
        }
    }

    /// A gateway whose table is the file's `stable` and `canary`, over `store`.
    async fn gateway(store: &Arc<TestStore>, seed: Option<&PolicyDoc>) -> Arc<Gateway> {
        let file = vec![
            file_upstream("stable", &["127.0.0.1:1"]),
            file_upstream("canary", &["127.0.0.1:2"]),
        ];
        let timeouts = Timeouts::default();
        let live = Arc::new(LiveUpstreams::new(file.clone(), &timeouts).unwrap());
        let table = EffectiveUpstreams::new(live, file, timeouts, PathBuf::from("/nowhere"));
        let store: Arc<dyn Store> = store.clone();
        Gateway::start(
            store,
            table,
            seed,
            Duration::from_secs(1),
            HistoryRetention::default(),
        )
        .await
        .expect("the gateway starts")
    }

    fn servers(g: &Gateway, name: &str) -> Vec<String> {
        let live = g.upstream_table().unwrap().live().current();
        let i = live.index_of(name).expect("in the table");
        live.servers(i).map(String::from).collect()
    }

    #[tokio::test]
    async fn a_policy_upstream_replaces_the_files_and_one_only_in_the_policy_is_added() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB))).await;
        let names_before = g.upstream_names();
        g.change(None, "alice", "upstreams", |d| {
            d.upstreams
                .insert("canary".into(), shared(&["127.0.0.1:3", "127.0.0.1:4"]));
            d.upstreams.insert("next".into(), shared(&["127.0.0.1:5"]));
            d.services[0].versions.insert("v3".into(), "next".into());
            Ok(())
        })
        .await
        .unwrap();
        // Stable indexes: the file's keep theirs, the new one is appended.
        assert_eq!(
            *g.upstream_names(),
            vec!["stable".to_string(), "canary".into(), "next".into()]
        );
        assert_eq!(names_before[..], g.upstream_names()[..2]);
        assert_eq!(servers(&g, "canary"), ["127.0.0.1:3", "127.0.0.1:4"]);
        assert_eq!(servers(&g, "next"), ["127.0.0.1:5"]);
        assert_eq!(servers(&g, "stable"), ["127.0.0.1:1"]);
        let origins: Vec<(String, UpstreamOrigin)> = g
            .upstream_table()
            .unwrap()
            .upstreams()
            .into_iter()
            .map(|u| (u.name, u.origin))
            .collect();
        assert_eq!(
            origins,
            vec![
                ("stable".into(), UpstreamOrigin::Config),
                ("canary".into(), UpstreamOrigin::PolicyOverConfig),
                ("next".into(), UpstreamOrigin::Policy),
            ]
        );

        // The policy's canary deleted: the file's comes back; `next` goes with its version.
        g.change(None, "alice", "back", |d| {
            d.upstreams.clear();
            d.services[0].versions.remove("v3");
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(servers(&g, "canary"), ["127.0.0.1:2"]);
        assert_eq!(g.upstream_names()[2], "", "a retired slot");
    }

    #[tokio::test]
    async fn a_definition_this_instance_cannot_build_is_refused_before_anything_is_written() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB))).await;
        let mut tls = shared(&["https://a.example:443"]);
        tls.ca = Some("missing-ca.pem".into());
        let refused = g
            .change(None, "alice", "bad", |d| {
                d.upstreams.insert("api".into(), tls.clone());
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "policy rejected: upstreams.api.ca: cannot read /nowhere/missing-ca.pem: No such file or directory (os error 2)"
        );
        let bad_line = g
            .change(None, "alice", "bad", |d| {
                d.upstreams
                    .insert("api".into(), shared(&["127.0.0.1:6", "nohost"]));
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(
            bad_line.to_string(),
            "policy rejected: upstreams.api.servers[1]: `nohost` has no port: write host:port"
        );
        assert_eq!(g.revision(), 1);
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 1);
    }

    #[tokio::test]
    async fn a_stored_revision_this_instance_cannot_build_leaves_the_old_policy_and_table() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB))).await;
        // Another instance (which has the CA file) wrote a revision this one cannot build.
        let mut next = doc(WEB);
        let mut tls = shared(&["https://a.example:443"]);
        tls.ca = Some("missing-ca.pem".into());
        next.upstreams.insert("api".into(), tls);
        next.services[0].versions.insert("v3".into(), "api".into());
        store
            .save_policy(&serde_json::to_string(&next).unwrap(), Some(1))
            .await
            .unwrap();
        let e = g.reload().await.unwrap_err();
        assert!(
            matches!(&e, GatewayError::UnbuildableUpstream { revision: 2, running: 1, source } if source.upstream == "api" && source.field.to_string() == "upstreams.api.ca"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "revision 2 is not applied on this instance: upstream `api` cannot be built here: upstreams.api.ca: cannot read /nowhere/missing-ca.pem: No such file or directory (os error 2); the running policy (revision 1) and its upstreams stay"
        );
        assert_eq!(g.revision(), 1);
        assert_eq!(*g.policy().doc(), doc(WEB));
        assert_eq!(g.upstream_names().len(), 2);
        assert!(g
            .upstream_table()
            .unwrap()
            .live()
            .current()
            .index_of("api")
            .is_none());

        // A change made through this instance meanwhile is the fleet's: written, not applied
        // here (its admin API does not refuse every change)...
        let applied = g
            .change(None, "alice", "v4", |d| {
                d.services[0].versions.insert("v4".into(), "canary".into());
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(applied.revision, 3);
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 3);
        assert_eq!(g.revision(), 1, "still the old policy here");
        // ... unless it is wrong for everyone, or changes the upstream this instance cannot build.
        let wrong = g
            .change(None, "alice", "v5", |d| {
                d.services[0].versions.insert("v5".into(), "nowhere".into());
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(
            wrong.to_string().contains("unknown upstream `nowhere`"),
            "{wrong}"
        );
        let still = g
            .change(None, "alice", "api again", |d| {
                d.upstreams.get_mut("api").unwrap().sni = Some("a.example".into());
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(
            still.to_string(),
            "policy rejected: upstreams.api.ca: cannot read /nowhere/missing-ca.pem: No such file or directory (os error 2)"
        );
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 3);
    }

    #[tokio::test]
    async fn a_config_reload_keeps_the_policys_upstreams_over_the_files() {
        let store = TestStore::new();
        let g = gateway(&store, Some(&doc(WEB))).await;
        g.change(None, "alice", "canary shared", |d| {
            d.upstreams
                .insert("canary".into(), shared(&["127.0.0.1:3"]));
            Ok(())
        })
        .await
        .unwrap();
        // The file changes both: stable follows it, canary stays the policy's.
        let change = g
            .set_file_upstreams(
                vec![
                    file_upstream("stable", &["127.0.0.1:7"]),
                    file_upstream("canary", &["127.0.0.1:8"]),
                ],
                Timeouts::default(),
            )
            .await
            .unwrap();
        assert_eq!(change.changed, ["stable"]);
        assert_eq!(servers(&g, "stable"), ["127.0.0.1:7"]);
        assert_eq!(servers(&g, "canary"), ["127.0.0.1:3"]);
        assert_eq!(g.revision(), 2);

        // A file without `canary` is fine: the policy defines it.
        g.set_file_upstreams(
            vec![file_upstream("stable", &["127.0.0.1:7"])],
            Timeouts::default(),
        )
        .await
        .unwrap();
        assert_eq!(servers(&g, "canary"), ["127.0.0.1:3"]);
    }
}
