//! Rollouts: graygate carrying a release from the first gray user to 100% by itself.
//!
//! A rollout moves the canary weight of one service's split step by step, compares the canary
//! with stable on graygate's own traffic in the same window, promotes at the end of the plan and
//! sends everyone back by itself when the canary is worse.
//!
//! The core is pure (no I/O): the plan and state as the policy holds them (`model`), and the
//! transitions (`machine`).

pub mod machine;
pub mod model;

pub use model::{RolloutDoc, RolloutState, RolloutStatus, Step};
