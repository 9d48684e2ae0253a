//! Rollouts: graygate carrying a release from the first gray user to 100% by itself.
//!
//! A rollout moves the canary weight of one service's split step by step, compares the canary
//! with stable on graygate's own traffic in the same window, promotes at the end of the plan and
//! sends everyone back by itself when the canary is worse.
//!
//! The core is pure (no I/O, no waiting):
//! - [`model`]: the plan and state as the policy holds them.
//! - [`machine`]: the transitions.
//! - [`figures`]: the per-version counters the data plane bumps (a few atomic adds) and the plain
//!   figures copied from them (requests, errors, a latency histogram).
//! - [`stats`]: the significance tests (two-proportion z, Mann–Whitney U on histograms).
//! - [`analysis`]: the analysis settings and the verdict on one window, canary against stable.

pub mod analysis;
pub mod figures;
pub mod machine;
pub mod model;
pub mod stats;

pub use analysis::{
    judge, requests_to_detect, AnalysisSettings, Check, Condition, Measure, Outcome, SettingsError,
    StatusSet, Verdict,
};
pub use figures::{Figures, VersionCounters};
pub use model::{RolloutDoc, RolloutState, RolloutStatus, Step};
