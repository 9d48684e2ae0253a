//! Requests routed to each version since start, for the admin API's status.
//!
//! The request path must pay almost nothing for this: it loads a snapshot of the table and bumps
//! one atomic. So the table is rebuilt (off the request path) whenever a policy is installed, and
//! a version that stays in the new policy keeps its counter (the same `Arc<AtomicU64>`), so that
//! its count survives a policy change; a version that leaves is dropped with its count.

use crate::policy::PolicyDoc;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// service -> version -> requests routed there.
type Table = HashMap<Arc<str>, HashMap<Arc<str>, Arc<AtomicU64>>>;

/// Per-version request counters of this instance.
pub(super) struct Traffic {
    /// Replaced as a whole by [`Traffic::rebuild`]; read by [`Traffic::count`] on every request.
    table: ArcSwap<Table>,
}

impl Traffic {
    /// No versions, nothing counted.
    pub(super) fn new() -> Self {
        Traffic {
            table: ArcSwap::from_pointee(Table::new()),
        }
    }

    /// Counts one request routed to `version` of `service`. A version the table does not know
    /// (a request decided on a policy that was replaced meanwhile) is not counted.
    pub(super) fn count(&self, service: &str, version: &str) {
        if let Some(n) = self
            .table
            .load()
            .get(service)
            .and_then(|versions| versions.get(version))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A counter for every version of `doc`, reusing the counters of versions that stay.
    pub(super) fn rebuild(&self, doc: &PolicyDoc) {
        let old = self.table.load();
        let mut table = Table::new();
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
        self.table.store(Arc::new(table));
    }

    /// The counts now: service -> version -> requests, for every version of the running policy.
    pub(super) fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.table
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        t.count("web", "v1");
        assert!(counts(&t).is_empty(), "nothing is known before a policy");
        t.rebuild(&doc(&[("web", &["v1", "v2"])]));
        t.count("web", "v1");
        t.count("web", "v1");
        t.count("web", "v2");
        t.count("web", "v9");
        t.count("api", "v1");
        assert_eq!(counts(&t), "web/v1=2 web/v2=1");
    }

    #[test]
    fn counters_survive_a_policy_change_for_versions_that_stay() {
        let t = Traffic::new();
        t.rebuild(&doc(&[("web", &["v1", "v2"])]));
        t.count("web", "v1");
        t.count("web", "v2");
        t.count("web", "v2");
        // v2 leaves, v3 arrives, a new service appears: v1 keeps its count.
        t.rebuild(&doc(&[("web", &["v1", "v3"]), ("api", &["a"])]));
        t.count("web", "v1");
        t.count("web", "v3");
        assert_eq!(counts(&t), "api/a=0 web/v1=2 web/v3=1");
        // A version that comes back starts from zero: its old counter left with it.
        t.rebuild(&doc(&[("web", &["v1", "v2"])]));
        assert_eq!(counts(&t), "web/v1=2 web/v2=0");
    }
}
