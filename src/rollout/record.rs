//! What the rollout driver keeps in the store beside the policy: each instance's counters, and
//! the driver's working record of each rollout (its current window, the recorded verdicts).
//!
//! Plain serde types with the window arithmetic, no I/O: the driver reads and writes them, the
//! admin API shows them.

use super::analysis::Outcome;
use super::figures::Figures;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Store record key prefix of the instances' counters (`counters/<instance>`).
pub const COUNTERS_PREFIX: &str = "counters/";
/// Store record key of a service's rollout working record.
pub fn rollout_key(service: &str) -> String {
    format!("rollout/{service}")
}
/// The store lease of the instance that drives every rollout.
pub const DRIVER_LEASE: &str = "rollout-driver";
/// Verdicts kept in a working record, newest last.
pub const VERDICTS_KEPT: usize = 50;

/// version -> figures.
pub type VersionFigures = BTreeMap<String, Figures>;

/// One instance's counters as it publishes them: cumulative since that process started counting,
/// for the services with a rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceCounters {
    /// When they were taken, in ms since the Unix epoch.
    pub at_ms: u64,
    /// service -> version -> figures.
    pub services: BTreeMap<String, VersionFigures>,
}

/// Which stretch of a rollout a window belongs to: a new step (or a resume, or the promote)
/// starts a new window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowKey {
    pub step: usize,
    pub step_started_ms: u64,
    pub promoted: bool,
}

/// The current analysis window of one rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub key: WindowKey,
    /// When it started, in ms since the Unix epoch.
    pub started_ms: u64,
    /// Each instance's counters of this service when the window started (or when the instance
    /// was first seen in it): the window is what came after.
    pub baselines: BTreeMap<String, VersionFigures>,
    /// What the window holds so far, per version, summed over every instance.
    pub figures: VersionFigures,
    /// Set once the window was recorded as short of data, so that it is recorded once.
    #[serde(default)]
    pub short_recorded: bool,
    /// Each instance's counters at the last [`Window::update`]: where the next window starts.
    #[serde(skip)]
    latest: BTreeMap<String, VersionFigures>,
}

impl Window {
    /// A window starting now from these counters.
    pub fn start(key: WindowKey, now_ms: u64, instances: &[(String, VersionFigures)]) -> Window {
        Window {
            key,
            started_ms: now_ms,
            baselines: instances.iter().cloned().collect(),
            figures: VersionFigures::new(),
            short_recorded: false,
            latest: BTreeMap::new(),
        }
    }

    /// Ends this window and starts the next at `now_ms`, from the counters of the last update.
    pub fn restart(&mut self, now_ms: u64) {
        self.baselines = std::mem::take(&mut self.latest);
        self.latest = self.baselines.clone();
        self.figures.clear();
        self.started_ms = now_ms;
        self.short_recorded = false;
    }

    /// Sums, over every instance, what each version counted since the window started. An
    /// instance seen for the first time counts from its first sight (its baseline is taken
    /// now); an instance whose counters went down (restarted) counts from zero.
    pub fn update(&mut self, instances: &[(String, VersionFigures)]) {
        let mut sums = VersionFigures::new();
        for (instance, now) in instances {
            let base = self
                .baselines
                .entry(instance.clone())
                .or_insert_with(|| now.clone());
            for (version, figures) in now {
                let b = base.entry(version.clone()).or_default();
                if figures.requests < b.requests {
                    // The instance restarted: everything it counted since is new.
                    *b = Figures::default();
                }
                sums.entry(version.clone())
                    .or_default()
                    .add(&figures.saturating_sub(b));
            }
        }
        self.figures = sums;
        self.latest = instances.iter().cloned().collect();
    }

    /// The window's figures of `version` (empty if it had none).
    pub fn of(&self, version: &str) -> Figures {
        self.figures.get(version).cloned().unwrap_or_default()
    }
}

/// One recorded verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// When it was reached, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The step it was reached at (from 0), and the canary's weight then.
    pub step: usize,
    pub weight: f64,
    pub outcome: Outcome,
    /// The verdict in words, with its figures.
    pub text: String,
    /// Requests of each version in the window.
    pub canary_requests: u64,
    pub stable_requests: u64,
    /// What the verdict made the driver do (`aborted`), or why it did nothing (`dry run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// The driver's working record of one rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkingRecord {
    /// The instance driving it.
    pub driver: String,
    /// The run of the rollout it belongs to ([`crate::rollout::RolloutStatus::started_ms`]).
    #[serde(default)]
    pub started_ms: u64,
    /// When the record was last written, in ms since the Unix epoch.
    pub updated_ms: u64,
    pub window: Window,
    /// Failing windows in a row.
    pub failures: u32,
    /// Passing windows at this step.
    pub passes: u32,
    /// Stable's figures in the last passing window before the promote: what the guard compares
    /// the promoted version with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable: Option<Figures>,
    /// Recorded verdicts, oldest first, the newest [`VERDICTS_KEPT`].
    pub verdicts: Vec<VerdictRecord>,
}

impl WorkingRecord {
    /// Records a verdict, dropping the oldest beyond [`VERDICTS_KEPT`].
    pub fn record(&mut self, verdict: VerdictRecord) {
        self.verdicts.push(verdict);
        let extra = self.verdicts.len().saturating_sub(VERDICTS_KEPT);
        self.verdicts.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn figures(requests: u64, errors: u64) -> Figures {
        let mut f = Figures::default();
        for i in 0..requests {
            f.record(i < errors, Duration::from_millis(2));
        }
        f
    }

    fn instance(name: &str, v1: (u64, u64), v2: (u64, u64)) -> (String, VersionFigures) {
        let mut m = VersionFigures::new();
        m.insert("v1".into(), figures(v1.0, v1.1));
        m.insert("v2".into(), figures(v2.0, v2.1));
        (name.into(), m)
    }

    #[test]
    fn a_window_sums_every_instance_since_its_start() {
        let key = WindowKey::default();
        let mut w = Window::start(key, 0, &[instance("a", (100, 0), (10, 1))]);
        // a counted more; b appears; nothing before b's first sight counts.
        w.update(&[
            instance("a", (150, 0), (15, 3)),
            instance("b", (1000, 5), (90, 9)),
        ]);
        assert_eq!((w.of("v1").requests, w.of("v2").requests), (50, 5));
        assert_eq!(w.of("v2").errors, 2);
        w.update(&[
            instance("a", (160, 0), (16, 3)),
            instance("b", (1100, 5), (100, 19)),
        ]);
        assert_eq!((w.of("v1").requests, w.of("v2").requests), (160, 16));
        assert_eq!(w.of("v2").errors, 12);
        // a restarted: its counters went down; what it counted since is still counted.
        w.update(&[
            instance("a", (7, 0), (1, 1)),
            instance("b", (1100, 5), (100, 19)),
        ]);
        assert_eq!((w.of("v1").requests, w.of("v2").requests), (107, 11));
        w.update(&[
            instance("a", (17, 0), (2, 1)),
            instance("b", (1100, 5), (100, 19)),
        ]);
        assert_eq!((w.of("v1").requests, w.of("v2").requests), (117, 12));
        // The next window starts from the last counters seen.
        w.restart(9);
        assert_eq!((w.started_ms, w.of("v1").requests), (9, 0));
        w.update(&[
            instance("a", (20, 0), (2, 1)),
            instance("b", (1101, 5), (100, 19)),
        ]);
        assert_eq!((w.of("v1").requests, w.of("v2").requests), (4, 0));
        assert_eq!(w.of("v9"), Figures::default());
    }

    #[test]
    fn the_record_keeps_the_newest_verdicts() {
        let mut r = WorkingRecord::default();
        for i in 0..(VERDICTS_KEPT as u64 + 3) {
            r.record(VerdictRecord {
                at_ms: i,
                step: 0,
                weight: 5.0,
                outcome: Outcome::Pass,
                text: String::new(),
                canary_requests: 0,
                stable_requests: 0,
                action: None,
            });
        }
        assert_eq!(r.verdicts.len(), VERDICTS_KEPT);
        assert_eq!(r.verdicts[0].at_ms, 3);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<WorkingRecord>(&json).unwrap(), r);
    }
}
