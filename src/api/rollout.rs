//! A rollout over the wire: what starts one, and what `rollout status` shows.

use crate::rollout::record::VerdictRecord;
use crate::rollout::{RolloutDoc, RolloutState};
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/services/{s}/rollout`: the plan (a [`RolloutDoc`] without `status`; every
/// field but `version` has a default).
pub type StartRollout = RolloutDoc;

/// `GET /v1/services/{s}/rollout` and the answer of every rollout action: the plan, where it is,
/// the current window's figures, and the recorded verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub service: String,
    /// The version being rolled out.
    pub version: String,
    /// `progressing`, `waiting`, `paused`, `promoted` or `aborted`; absent for a plan that was
    /// written but has not started yet.
    pub state: Option<RolloutState>,
    /// The current step, counted from 1, and how many the plan has.
    pub step: usize,
    pub steps: usize,
    /// The canary's weight in the split now, in percent (100 once promoted).
    pub weight: f64,
    /// Why it is in this state.
    pub reason: String,
    /// When it entered this state, and when the current step began (RFC 3339).
    pub since: Option<String>,
    pub step_started: Option<String>,
    /// While the post-promotion guard runs: when it ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_until: Option<String>,
    /// The plan as it is stored.
    pub plan: RolloutDoc,
    /// The current analysis window, once a driver has looked at it.
    pub window: Option<WindowView>,
    /// While the current window has fewer requests of a version than the analysis needs
    /// (`min_requests`): how many more of each it needs before a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more_requests: Option<MoreRequests>,
    /// Failing windows in a row now.
    pub failures: u32,
    /// The recorded verdicts, oldest first.
    pub verdicts: Vec<VerdictRecord>,
    /// The instance driving the rollouts (it holds the store lease).
    pub driver: Option<String>,
}

/// How many more requests of each version a window needs before it can be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoreRequests {
    pub canary: u64,
    pub stable: u64,
}

/// One analysis window, summed over every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowView {
    /// When it started (RFC 3339) and how long it has run, in seconds.
    pub started: String,
    pub seconds: f64,
    pub canary: VersionFigures,
    /// During the post-promotion guard: the old stable's figures of its last passing window.
    pub stable: VersionFigures,
}

/// One version's figures in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionFigures {
    pub version: String,
    pub requests: u64,
    pub errors: u64,
    /// Errors in percent of requests (0 without requests).
    pub error_percent: f64,
    /// Latency quantiles in milliseconds (absent without requests).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}
