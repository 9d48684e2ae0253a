//! What each version's requests came to since start: the counts of the admin API's status, and
//! the errors and latencies the rollout analysis compares.
//!
//! The request path must pay almost nothing for this: it loads a snapshot of the table, finds the
//! version and makes a few relaxed atomic adds ([`VersionCounters::record`]); no lock, no
//! allocation. So the table is rebuilt (off the request path) whenever a policy is installed, and
//! a version that stays in the new policy keeps its counters (the same `Arc`), so that its figures
//! survive a policy change; a version that leaves is dropped with its figures.
//!
//! Which statuses count as errors is decided per service when the table is built (the rollout's
//! `error_statuses`, else 5xx), so that the request path tests one bit.

use crate::policy::{FastState, PolicyDoc};
use crate::proxy::Answer;
use crate::rollout::{AnalysisSettings, Figures, StatusSet, VersionCounters};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One service's counters.
struct ServiceCounters {
    /// The statuses that count as errors for this service.
    errors: StatusSet,
    /// version -> its counters.
    versions: HashMap<Arc<str>, Arc<Counted>, FastState>,
}

/// One version's counters: what the rollout analysis reads, and the requests stable answered for
/// it (the dashboard's fallbacks).
#[derive(Default)]
struct Counted {
    figures: VersionCounters,
    fallbacks: AtomicU64,
}

/// service -> its counters. Both tables' keys are the policy's names (never a request's), so
/// they take the request path's fast hasher: two SipHash lookups were about 1% of a request's
/// instructions.
type Table = HashMap<Arc<str>, ServiceCounters, FastState>;

/// service -> version -> figures.
pub type FiguresTable = BTreeMap<String, BTreeMap<String, Figures>>;

/// Per-version counters of this instance.
pub(super) struct Traffic {
    /// Replaced as a whole by [`Traffic::rebuild`]; read by [`Traffic::count`] on every request.
    table: ArcSwap<Table>,
}

impl Traffic {
    /// No versions, nothing counted.
    pub(super) fn new() -> Self {
        Traffic {
            table: ArcSwap::from_pointee(Table::default()),
        }
    }

    /// Counts one answered request of `version` of `service`. A version the table does not know
    /// (a request decided on a policy that was replaced meanwhile) is not counted.
    pub(super) fn count(&self, service: &str, version: &str, answer: Answer) {
        let table = self.table.load();
        if let Some(s) = table.get(service) {
            if let Some(counters) = s.versions.get(version) {
                let error = answer.failed || s.errors.contains(answer.status);
                counters.figures.record(error, answer.latency);
                if answer.fell_back {
                    counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Counters for every version of `doc`, reusing the counters of versions that stay.
    pub(super) fn rebuild(&self, doc: &PolicyDoc) {
        let old = self.table.load();
        let mut table = Table::default();
        for s in &doc.services {
            let service: Arc<str> = Arc::from(s.name.as_str());
            let known = old.get(&service);
            let versions = s
                .versions
                .keys()
                .map(|v| {
                    let counters = known
                        .and_then(|k| k.versions.get(v.as_str()))
                        .cloned()
                        .unwrap_or_default();
                    (Arc::from(v.as_str()), counters)
                })
                .collect();
            let errors = s
                .rollout
                .as_ref()
                .and_then(|r| r.analysis.error_statuses().ok())
                .unwrap_or_else(|| {
                    AnalysisSettings::default()
                        .error_statuses()
                        .unwrap_or_default()
                });
            table.insert(service, ServiceCounters { errors, versions });
        }
        self.table.store(Arc::new(table));
    }

    /// The request counts now: service -> version -> requests, for every version of the running
    /// policy.
    pub(super) fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.figures()
            .into_iter()
            .map(|(service, versions)| {
                let counts = versions.into_iter().map(|(v, f)| (v, f.requests)).collect();
                (service, counts)
            })
            .collect()
    }

    /// Every version's figures now (cumulative since this process started counting it).
    pub(super) fn figures(&self) -> FiguresTable {
        self.table
            .load()
            .iter()
            .map(|(service, s)| {
                let figures = s
                    .versions
                    .iter()
                    .map(|(v, n)| (v.to_string(), n.figures.snapshot()))
                    .collect();
                (service.to_string(), figures)
            })
            .collect()
    }

    /// Every version's requests answered by stable instead (cumulative): service -> version ->
    /// fallbacks.
    pub(super) fn fallbacks(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.table
            .load()
            .iter()
            .map(|(service, s)| {
                let counts = s
                    .versions
                    .iter()
                    .map(|(v, n)| (v.to_string(), n.fallbacks.load(Ordering::Relaxed)))
                    .collect();
                (service.to_string(), counts)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OK: Answer = Answer {
        status: 200,
        failed: false,
        fell_back: false,
        latency: Duration::from_millis(1),
    };

    /// A document with these services, each with these versions (the first one stable).
    fn doc(services: &[(&str, &[&str])]) -> PolicyDoc {
        let mut text = String::new();
        for (name, versions) in services {
            let table: Vec<String> = versions.iter().map(|v| format!("{v} = \"u\"")).collect();
            text.push_str(&format!(
                "[[services]]\nname = \"{name}\"\nstable = \"{}\"\nversions = {{ {} }}\n",
                versions[0],
                table.join(", ")
            ));
        }
        toml::from_str(&text).expect("a valid document")
    }

    /// `web/v1=2 web/v2=1`: every counter, sorted.
    fn counts(t: &Traffic) -> String {
        let mut all = Vec::new();
        for (service, versions) in t.snapshot() {
            for (version, n) in versions {
                all.push(format!("{service}/{version}={n}"));
            }
        }
        all.join(" ")
    }

    #[test]
    fn counts_known_versions_only() {
        let t = Traffic::new();
        t.count("web", "v1", OK);
        assert!(counts(&t).is_empty(), "nothing is known before a policy");
        t.rebuild(&doc(&[("web", &["v1", "v2"])]));
        t.count("web", "v1", OK);
        t.count("web", "v1", OK);
        t.count("web", "v2", OK);
        t.count("web", "v9", OK);
        t.count("api", "v1", OK);
        assert_eq!(counts(&t), "web/v1=2 web/v2=1");
    }

    #[test]
    fn counters_survive_a_policy_change_for_versions_that_stay() {
        let t = Traffic::new();
        t.rebuild(&doc(&[("web", &["v1", "v2"])]));
        t.count("web", "v1", OK);
        t.count("web", "v2", OK);
        t.count("web", "v2", OK);
        // v2 leaves, v3 arrives, a new service appears: v1 keeps its count.
        t.rebuild(&doc(&[("web", &["v1", "v3"]), ("api", &["a"])]));
        t.count("web", "v1", OK);
        t.count("web", "v3", OK);
        assert_eq!(counts(&t), "api/a=0 web/v1=2 web/v3=1");
        // A version that comes back starts from zero: its old counter left with it.
        t.rebuild(&doc(&[("web", &["v1", "v2"])]));
        assert_eq!(counts(&t), "web/v1=2 web/v2=0");
    }
}
