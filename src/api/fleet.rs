//! The fleet view: every graygate instance sharing the store, as each one reports itself in its
//! heartbeat record (`GET /v1/fleet`, `graygate ctl fleet`).

use serde::{Deserialize, Serialize};

/// One instance, as its heartbeat record says (the record's JSON is this type too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetInstance {
    /// The instance id (new for every process; the rollout driver's id too).
    pub id: String,
    /// The admin API's address, when it has one.
    #[serde(default)]
    pub admin: Option<String>,
    /// The data plane's listeners.
    #[serde(default)]
    pub listen: Vec<String>,
    /// graygate's version.
    pub version: String,
    /// The revision of the policy it routes with (0: the config's, never stored).
    pub revision: u64,
    /// Where that policy came from: `store`, `snapshot` (started while the store was down) or
    /// `config` (the config's policy, owed to the store).
    pub source: String,
    /// The store as this instance sees it: `healthy`, `degraded` (cannot reach it) or `behind`
    /// (it holds an older revision than this instance applied, or none).
    pub store: String,
    /// Since when the store is in that state, RFC 3339 UTC.
    #[serde(default)]
    pub store_since: Option<String>,
    /// Set while it cannot apply the store's revision.
    #[serde(default)]
    pub diverged: Option<Diverged>,
    /// Its last-known-good snapshot.
    #[serde(default)]
    pub snapshot: Option<SnapshotView>,
    /// When it started, RFC 3339 UTC.
    pub started_at: String,
    /// When it wrote this record, RFC 3339 UTC (it writes one every heartbeat and after each
    /// install; a record not renewed expires).
    pub last_seen: String,
}

/// Why an instance cannot apply a stored revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diverged {
    /// The stored revision it cannot apply.
    pub revision: u64,
    /// Why, as the instance says it.
    pub reason: String,
    /// Since when, RFC 3339 UTC.
    pub since: String,
}

/// An instance's snapshot, as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// The file.
    pub path: String,
    /// The revision last written by this process.
    #[serde(default)]
    pub revision: Option<u64>,
    /// The last write's error.
    #[serde(default)]
    pub error: Option<String>,
    /// The revision the process started from when it started from the snapshot.
    #[serde(default)]
    pub started_from: Option<u64>,
}

/// `GET /v1/fleet`: every live instance, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// The store's revision (as the answering instance reads it; `None` when it cannot).
    pub revision: Option<u64>,
    /// The answering instance's id.
    pub this: String,
    pub instances: Vec<FleetInstance>,
}

/// How many live instances route with a revision: a change's answer carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedBy {
    /// The revision.
    pub revision: u64,
    /// Live instances that report it (or a newer one).
    pub applied: usize,
    /// Live instances.
    pub live: usize,
    /// The ids of those that do not, with the revision each reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lagging: Vec<Lagging>,
    /// Whether a wait for them ran out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

/// An instance that has not applied a revision yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagging {
    pub id: String,
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
}

impl std::fmt::Display for AppliedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "applied: {} of {} instances", self.applied, self.live)?;
        if !self.lagging.is_empty() {
            let names: Vec<String> = self
                .lagging
                .iter()
                .map(|l| match &l.diverged {
                    Some(why) => format!("{} (at {}, diverged: {why})", l.id, l.revision),
                    None => format!("{} (at {})", l.id, l.revision),
                })
                .collect();
            write!(f, "; lagging: {}", names.join(", "))?;
        }
        if self.timed_out {
            write!(f, " (the wait ran out)")?;
        }
        Ok(())
    }
}
