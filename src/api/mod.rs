//! The admin API's wire vocabulary: every request and answer body, the error shape, the revision
//! rule (`ETag` and `If-Match`) and the paths, shared by the server ([`crate::admin`]) and its
//! command line ([`crate::cli`]).
//!
//! Both sides speak through these types, so a renamed field changes the server and `graygate ctl`
//! together, and a mismatch fails to compile instead of printing `?`. The JSON they make is the
//! one `docs/admin-api.md` and `docs/openapi.yaml` describe; the policy documents themselves
//! (routes, services, rules) are [`crate::policy::model`]'s, sent as they are.
//!
//! Nothing here knows about HTTP servers or clients: no axum, no hyper. The admin turns these
//! types into responses; ctl reads them back out of the bodies.
//!
//! # Files
//! - `error`: [`ErrorCode`] (one per kind of refusal, with its status) and the body of a refusal.
//! - `revision`: [`Revision`] (what `ETag` carries), [`IfMatch`], [`Revisioned`] answers.
//! - `paths`: every endpoint's route pattern and the function that fills it with
//!   percent-encoded segments; the query parameters.
//! - `policy`: answers and requests about the policy: routes, services, versions, rules,
//!   weights, promote and rollback.
//! - `history`: the history record and undo.
//! - `reload`: what reading the config file again did (`POST /v1/reload`).
//! - `lists`: gray list entries.
//! - `rollout`: starting a rollout, and its status with the window and the verdicts.
//! - `status`: health, readiness, status and explain.
//! - `live`: the dashboard's sign-in and the live figures of every version.
//! - `upstreams`: the upstreams an instance runs, and the changes of the shared ones.
//! - `fleet`: every instance sharing the store, and how many applied a revision.

mod error;
mod fleet;
mod history;
mod lists;
mod live;
pub mod paths;
mod policy;
mod reload;
mod revision;
mod rollout;
mod status;
mod upstreams;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use fleet::{AppliedBy, Diverged, Fleet, FleetInstance, Lagging, SnapshotView};
pub use history::{History, HistoryChange, HistoryEntry, HistoryOne, Undo, Undone};
pub use lists::{
    EntriesRemoved, EntriesWritten, EntryCount, EntryList, ListedEntry, NewEntries, NewEntry,
    RemoveEntries,
};
pub use live::{LiveHistory, LiveRollout, LiveSample, LiveService, LiveVersion, Session, SignIn};
pub use paths::{EntryQuery, HistoryQuery, ReloadQuery, RuleQuery};
pub use policy::{
    NewVersion, PolicyReplaced, Promote, Promoted, Rollback, RolledBack, RouteCreated,
    RouteDeleted, RouteList, RoutePut, RuleDeleted, RuleList, RuleWritten, ServiceCreated,
    ServiceDeleted, ServiceList, ServicePut, SetVersion, SetWeights, Version, VersionDeleted,
    VersionList, VersionPut, Weights,
};
pub use reload::{ReloadOutcome, Reloaded, ReloadedPart, ReloadedPolicy};
pub use revision::{BadRevision, IfMatch, Revision, Revisioned, Tagged};
pub use rollout::{MoreRequests, RolloutView, StartRollout, VersionFigures, WindowView};
pub use status::{
    Explain, Explanation, Fallback, Health, MirrorExplained, MirrorMismatch, MirrorStatus,
    Readiness, Routed, RuleSummary, ServerHealth, ServerHealthState, ServiceStatus, Status,
    StoreStatus, Traffic, VersionHealth,
};
pub use upstreams::{
    ServerView, ServerWritten, SetServer, UpstreamDeleted, UpstreamList, UpstreamPut,
    UpstreamSource, UpstreamView,
};

/// The header every answer of the admin API carries, with graygate's version: how `graygate ctl`
/// tells the admin API from anything else that answers HTTP on an address (the data plane passes
/// the application's own answers through, and those do not carry it).
pub const ADMIN_HEADER: &str = "x-graygate-admin";

/// The value of [`ADMIN_HEADER`]: the version of graygate that answers.
pub const ADMIN_VERSION: &str = env!("CARGO_PKG_VERSION");
