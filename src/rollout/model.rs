//! A rollout as the policy document holds it: the operator's plan and the state the driver moves
//! it through.
//!
//! The rollout lives in the service it carries ([`crate::policy::model::ServiceDoc::rollout`]), so every
//! transition is a policy change: it is written with a history record saying why, it reaches
//! every instance by the store's push, and it survives a restart. A plan written in the policy
//! TOML without a `status` is started by the driver as soon as it sees it.
//!
//! What changes every second (the current window, the verdicts with their figures) is not here:
//! it is the driver's working record in the store (see `rollout::driver`).

use crate::policy::model::ServiceDoc;
use crate::policy::path::FieldPath;
use crate::policy::PolicyDoc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// The canary weights of the default plan, in percent; after the last one, promote.
pub const DEFAULT_STEPS: [f64; 4] = [5.0, 25.0, 50.0, 100.0];
/// How long each step holds by default before the next one.
pub const DEFAULT_STEP_TIME: Duration = Duration::from_secs(5 * 60);
/// The shortest analysis window by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How long a step waits for enough requests before it pauses for a human, by default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Consecutive failing windows that abort, by default.
pub const DEFAULT_FAILURE_LIMIT: u32 = 2;
/// How long the analysis goes on after the promote by default.
pub const DEFAULT_POST_PROMOTION: Duration = Duration::from_secs(5 * 60);

/// One service's rollout: the plan, and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutDoc {
    /// The version being rolled out (a version of the service, not its stable one).
    pub version: String,
    /// The canary weight of each step, ascending; after the last step, the canary is promoted.
    #[serde(default = "default_steps")]
    pub steps: Vec<Step>,
    /// How long a step holds when it names no `hold` of its own.
    #[serde(default = "default_step_time", with = "humantime_serde")]
    pub step_time: Duration,
    /// The shortest analysis window: a verdict covers at least this much traffic time.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long a window may wait for enough requests before the rollout pauses for a human.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Consecutive failing windows that abort the rollout.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    /// Verdicts are recorded, but the rollout is never aborted by them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// How long the analysis goes on after the promote (a failure rolls back); `0s`: off.
    #[serde(default = "default_post_promotion", with = "humantime_serde")]
    pub post_promotion: Duration,
    /// How a window is judged: minimum requests, the error and latency tests, the hard guard.
    #[serde(default)]
    pub analysis: crate::rollout::AnalysisSettings,
    /// Names of the service's rules that belong to this rollout (its cohort, e.g. staff first):
    /// an abort takes them out so that they stop sending to the canary, a retry puts them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohort: Vec<String>,
    /// The cohort rules an abort took out, in their order, for `retry`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parked_rules: Vec<crate::policy::model::RuleDoc>,
    /// Where the rollout is; absent in a plan that was written but not started yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RolloutStatus>,
}

fn default_steps() -> Vec<Step> {
    DEFAULT_STEPS.iter().map(|w| Step::weight(*w)).collect()
}
fn default_step_time() -> Duration {
    DEFAULT_STEP_TIME
}
fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}
fn default_max_wait() -> Duration {
    DEFAULT_MAX_WAIT
}
fn default_failure_limit() -> u32 {
    DEFAULT_FAILURE_LIMIT
}
fn default_post_promotion() -> Duration {
    DEFAULT_POST_PROMOTION
}

impl RolloutDoc {
    /// The default plan for `version`: 5% -> 25% -> 50% -> 100%, 5 minutes each, then promote.
    pub fn new(version: impl Into<String>) -> Self {
        RolloutDoc {
            version: version.into(),
            steps: default_steps(),
            step_time: DEFAULT_STEP_TIME,
            interval: DEFAULT_INTERVAL,
            max_wait: DEFAULT_MAX_WAIT,
            failure_limit: DEFAULT_FAILURE_LIMIT,
            dry_run: false,
            post_promotion: DEFAULT_POST_PROMOTION,
            analysis: crate::rollout::AnalysisSettings::default(),
            cohort: Vec::new(),
            parked_rules: Vec::new(),
            status: None,
        }
    }

    /// The state, `None` for a plan not started yet.
    pub fn state(&self) -> Option<RolloutState> {
        self.status.as_ref().map(|s| s.state)
    }

    /// True while the rollout may still move weights: progressing, waiting, paused, or promoted
    /// with its post-promotion guard running. Also true for a plan not started yet.
    pub fn is_active(&self) -> bool {
        match &self.status {
            None => true,
            Some(s) => match s.state {
                RolloutState::Progressing | RolloutState::Waiting | RolloutState::Paused => true,
                RolloutState::Promoted => s.guard_until_ms.is_some(),
                RolloutState::Aborted => false,
            },
        }
    }

    /// How long step `i` holds (its own `hold`, else `step_time`); `None` for a step that waits
    /// for `resume`.
    pub fn hold_of(&self, i: usize) -> Option<Duration> {
        let step = self.steps.get(i)?;
        if step.pause {
            return None;
        }
        Some(step.hold.unwrap_or(self.step_time))
    }

    /// Checks the plan against its service; the error names the field under `path` (the
    /// rollout's own path in the document).
    pub fn check(&self, service: &ServiceDoc, path: &FieldPath) -> Result<(), (FieldPath, String)> {
        if !service.versions.contains_key(&self.version) {
            return Err((
                path.field("version"),
                format!(
                    "unknown version `{}` (versions: {})",
                    self.version,
                    service
                        .versions
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let promoted = matches!(self.state(), Some(RolloutState::Promoted));
        if self.version == service.stable && !promoted {
            return Err((
                path.field("version"),
                format!(
                    "`{}` is the stable version of `{}`: roll out another version",
                    self.version, service.name
                ),
            ));
        }
        if self.steps.is_empty() {
            return Err((path.field("steps"), "a plan needs at least one step".into()));
        }
        let mut last = 0.0;
        for (i, step) in self.steps.iter().enumerate() {
            let at = path.field("steps").index(i);
            if !step.weight.is_finite() || step.weight <= 0.0 || step.weight > 100.0 {
                return Err((
                    at.field("weight"),
                    format!(
                        "a step's weight is a percent above 0 and at most 100, got {}",
                        step.weight
                    ),
                ));
            }
            if step.weight < last {
                return Err((
                    at.field("weight"),
                    format!("steps go up: {} comes after {last}", step.weight),
                ));
            }
            if step.pause && step.hold.is_some() {
                return Err((
                    at,
                    "a step either holds for a time or pauses for `resume`, not both".into(),
                ));
            }
            last = step.weight;
        }
        if self.interval.is_zero() {
            return Err((path.field("interval"), "must be above 0s".into()));
        }
        if self.max_wait < self.interval {
            return Err((
                path.field("max_wait"),
                format!(
                    "must be at least the interval ({})",
                    humantime::format_duration(self.interval)
                ),
            ));
        }
        if let Err(e) = self.analysis.validate() {
            return Err((path.field("analysis").join(&e.field), e.message));
        }
        if self.failure_limit == 0 {
            return Err((path.field("failure_limit"), "must be at least 1".into()));
        }
        for (i, name) in self.cohort.iter().enumerate() {
            let parked = self.parked_rules.iter().any(|r| &r.name == name);
            if !parked && !service.rules.iter().any(|r| &r.name == name) {
                return Err((
                    path.field("cohort").index(i),
                    format!("service `{}` has no rule `{name}`", service.name),
                ));
            }
        }
        if let Some(status) = &self.status {
            if status.step >= self.steps.len() {
                return Err((
                    path.field("status").field("step"),
                    format!("the plan has {} steps, counted from 0", self.steps.len()),
                ));
            }
        }
        Ok(())
    }
}

/// One step of a plan: the canary weight, then a hold or a pause for `resume`.
///
/// Written as a bare number (`25`: hold for `step_time`) or a table
/// (`{ weight = 50, hold = "10m" }`, `{ weight = 50, pause = true }`).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The canary's percent of the split.
    pub weight: f64,
    /// How long this step holds; absent: the plan's `step_time`.
    pub hold: Option<Duration>,
    /// Wait for `resume` instead of holding for a time.
    pub pause: bool,
}

impl Step {
    /// A step at `weight` that holds for the plan's `step_time`.
    pub fn weight(weight: f64) -> Self {
        Step {
            weight,
            hold: None,
            pause: false,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StepText {
    Weight(f64),
    Table(StepTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepTable {
    weight: f64,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    hold: Option<Duration>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pause: bool,
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.hold.is_none() && !self.pause {
            StepText::Weight(self.weight).serialize(s)
        } else {
            StepText::Table(StepTable {
                weight: self.weight,
                hold: self.hold,
                pause: self.pause,
            })
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StepText::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a step is a weight (25) or a table ({ weight = 50, hold = \"10m\" } or { weight = 50, pause = true })",
            )
        })? {
            StepText::Weight(weight) => Ok(Step::weight(weight)),
            StepText::Table(t) => Ok(Step {
                weight: t.weight,
                hold: t.hold,
                pause: t.pause,
            }),
        }
    }
}

/// Where a started rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStatus {
    pub state: RolloutState,
    /// When this run of the rollout began (its start, or its retry), in ms since the Unix epoch:
    /// the driver's working record belongs to one run.
    #[serde(default)]
    pub started_ms: u64,
    /// The current step, counted from 0.
    pub step: usize,
    /// When the current step began (its weight was set), in ms since the Unix epoch: its hold
    /// counts from here, and so does the analysis window.
    pub step_started_ms: u64,
    /// When the rollout entered its state, in ms since the Unix epoch.
    pub since_ms: u64,
    /// Why it is in this state, in words (the verdict that aborted it, who paused it).
    pub reason: String,
    /// The canary's weight before the rollout started: what it goes back to after the promote,
    /// so that a later rollback leaves the split as it was.
    #[serde(default)]
    pub weight_before: f64,
    /// While promoted: the end of the post-promotion guard, in ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_until_ms: Option<u64>,
}

/// The states of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// At a step, with enough data: holding, then moving to the next step.
    Progressing,
    /// At a step, without enough requests of each version for a verdict yet; never fails.
    Waiting,
    /// Stopped for a human: `resume` goes on (after `max_wait` without data, by `pause`, or at a
    /// step that waits for `resume`). The analysis goes on, and a failure still aborts.
    Paused,
    /// The canary is the stable version; while the guard runs, a failure rolls back.
    Promoted,
    /// Everyone is back on stable; `retry` starts again from the first step.
    Aborted,
}

impl RolloutState {
    /// The name as it is written (`progressing`).
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Waiting => "waiting",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Every state, in the order of a rollout's life (for metrics).
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Progressing,
        RolloutState::Waiting,
        RolloutState::Paused,
        RolloutState::Promoted,
        RolloutState::Aborted,
    ];
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PolicyDoc {
    /// The services with an active rollout ([`RolloutDoc::is_active`]): changes that would
    /// replace the policy wholesale (SIGHUP) must not run over them unless forced.
    pub fn active_rollouts(&self) -> Vec<&str> {
        self.services
            .iter()
            .filter(|s| s.rollout.as_ref().is_some_and(RolloutDoc::is_active))
            .map(|s| s.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(text: &str) -> ServiceDoc {
        let doc: PolicyDoc = toml::from_str(&format!(
            "[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"a\", v2 = \"b\" }}\n{text}"
        ))
        .expect("a valid document");
        doc.services.into_iter().next().expect("one service")
    }

    #[test]
    fn a_plan_in_toml_takes_the_defaults_and_round_trips() {
        let s = service("[services.rollout]\nversion = \"v2\"\n");
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(*r, RolloutDoc::new("v2"));
        assert!(r.is_active(), "a written plan is started by the driver");
        let json = serde_json::to_string(r).unwrap();
        let back: RolloutDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, *r);
        assert!(json.contains("\"step_time\":\"5m\""), "{json}");

        let s = service(
            "[services.rollout]\nversion = \"v2\"\nstep_time = \"30s\"\n\
             steps = [1, { weight = 10, hold = \"2m\" }, { weight = 50, pause = true }, 100]\n",
        );
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(r.hold_of(0), Some(Duration::from_secs(30)));
        assert_eq!(r.hold_of(1), Some(Duration::from_secs(120)));
        assert_eq!(r.hold_of(2), None);
        assert_eq!(r.hold_of(9), None);
        let back: RolloutDoc = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(back, *r);
    }

    #[test]
    fn bad_plans_name_their_field() {
        let cases = [
            (
                "version = \"v9\"",
                "rollout.version",
                "unknown version `v9`",
            ),
            (
                "version = \"v1\"",
                "rollout.version",
                "is the stable version",
            ),
            (
                "version = \"v2\"\nsteps = []",
                "rollout.steps",
                "at least one step",
            ),
            (
                "version = \"v2\"\nsteps = [5, 0]",
                "rollout.steps[1].weight",
                "above 0",
            ),
            (
                "version = \"v2\"\nsteps = [50, 25]",
                "rollout.steps[1].weight",
                "steps go up",
            ),
            (
                "version = \"v2\"\nsteps = [101]",
                "rollout.steps[0].weight",
                "at most 100",
            ),
            (
                "version = \"v2\"\nsteps = [{ weight = 5, hold = \"1m\", pause = true }]",
                "rollout.steps[0]",
                "not both",
            ),
            (
                "version = \"v2\"\ninterval = \"0s\"",
                "rollout.interval",
                "above 0s",
            ),
            (
                "version = \"v2\"\ninterval = \"2m\"\nmax_wait = \"1m\"",
                "rollout.max_wait",
                "at least the interval (2m)",
            ),
            (
                "version = \"v2\"\nfailure_limit = 0",
                "rollout.failure_limit",
                "at least 1",
            ),
            (
                "version = \"v2\"\ncohort = [\"staff\"]",
                "rollout.cohort[0]",
                "no rule `staff`",
            ),
        ];
        for (plan, field, message) in cases {
            let s = service(&format!("[services.rollout]\n{plan}\n"));
            let (at, text) = s
                .rollout
                .as_ref()
                .unwrap()
                .check(&s, &FieldPath::new("rollout"))
                .unwrap_err();
            assert_eq!(at.to_string(), field, "{plan}");
            assert!(text.contains(message), "{plan}: {text}");
        }
        let bad: Result<PolicyDoc, _> = toml::from_str(
            "[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v1 = \"a\" }\n\
             [services.rollout]\nversion = \"v2\"\nsteps = [\"five\"]\n",
        );
        assert!(bad.unwrap_err().to_string().contains("a step is a weight"));
    }

    #[test]
    fn active_rollouts_are_the_ones_that_may_still_move_weights() {
        let mut doc = PolicyDoc::default();
        let mut s = service("[services.rollout]\nversion = \"v2\"\n");
        doc.services.push(s.clone());
        assert_eq!(doc.active_rollouts(), ["web"]);
        let status = |state, guard| RolloutStatus {
            state,
            started_ms: 1,
            step: 0,
            step_started_ms: 1,
            since_ms: 1,
            reason: String::new(),
            weight_before: 0.0,
            guard_until_ms: guard,
        };
        for (state, guard, active) in [
            (RolloutState::Progressing, None, true),
            (RolloutState::Waiting, None, true),
            (RolloutState::Paused, None, true),
            (RolloutState::Promoted, Some(5), true),
            (RolloutState::Promoted, None, false),
            (RolloutState::Aborted, None, false),
        ] {
            s.rollout.as_mut().unwrap().status = Some(status(state, guard));
            doc.services[0] = s.clone();
            assert_eq!(!doc.active_rollouts().is_empty(), active, "{state}");
        }
    }
}
