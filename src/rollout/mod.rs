//! Rollouts: the pure core that carries a release from the first gray users to everyone, judging
//! the canary against stable on graygate's own traffic at every step.
//!
//! Nothing here does I/O or waits: the counters are atomics the data plane bumps, the figures are
//! plain numbers, and a verdict is a function of figures and settings. The driver that reads the
//! store and changes the policy lives outside.
//!
//! - [`figures`]: the per-version counters on the request path and the figures copied from them
//!   (requests, errors, a latency histogram).
//! - [`stats`]: the significance tests (two-proportion z, Mann–Whitney U on histograms).
//! - [`analysis`]: the analysis settings and the verdict on one window.

pub mod analysis;
pub mod figures;
pub mod stats;

pub use analysis::{
    judge, requests_to_detect, AnalysisSettings, Check, Condition, Measure, Outcome, SettingsError,
    StatusSet, Verdict,
};
pub use figures::{Figures, VersionCounters};
