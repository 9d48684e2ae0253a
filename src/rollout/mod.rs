//! Rollouts: the pure core that carries a release from the first gray users to everyone, judging
//! the canary against stable on graygate's own traffic at every step, and sending everyone back
//! by itself when the canary is worse.
//!
//! Nothing here does I/O or waits: the counters are atomics the data plane bumps, the figures are
//! plain numbers, a verdict is a function of figures and settings, and a transition is an edit of
//! the policy document. The driver that reads the store and changes the policy is the gateway's
//! (`gateway::rollouts`).
//!
//! - [`model`]: a service's rollout as the policy document holds it: the plan and its state.
//! - [`machine`]: the transitions (start, step, pause, resume, promote, abort, retry) as edits.
//! - [`figures`]: the per-version counters on the request path and the figures copied from them
//!   (requests, errors, a latency histogram).
//! - [`stats`]: the significance tests (two-proportion z, Mann–Whitney U on histograms).
//! - [`analysis`]: the analysis settings and the verdict on one window.
//! - [`record`]: what the driver keeps in the store: each instance's counters, the working
//!   record of each rollout (its window, its verdicts).

pub mod analysis;
pub mod figures;
pub mod machine;
pub mod model;
pub mod record;
pub mod stats;

pub use analysis::{
    judge, judge_against_earlier, requests_to_detect, AnalysisSettings, Check, Condition, Measure,
    Outcome, SettingsError, StatusSet, Verdict,
};
pub use figures::{Figures, VersionCounters};
pub use model::{RolloutDoc, RolloutState, RolloutStatus, Step};
