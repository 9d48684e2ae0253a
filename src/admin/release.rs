//! The two rollout steps: promote (a version becomes stable, everyone not sent elsewhere goes
//! there; rules, `by` and salt stay) and rollback (the last promote undone exactly if no new
//! canary started since, else the canary's weights to 0). Each moves the stable version and the
//! split at once, so they are actions on a service rather than edits of one resource; the edits
//! are [`crate::policy::edit::promote`] and [`crate::policy::edit::rollback`], and
//! `docs/admin-api.md#rollout-semantics` says what they do for an operator.

use super::extract::{OptionalJson, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, Promote, Promoted, Revisioned, Rollback, RolledBack};
use crate::policy::edit;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use std::sync::Arc;

/// The routes of promote and rollback.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::PROMOTE, post(promote))
        .route(paths::ROLLBACK, post(rollback))
}

async fn promote(
    State(s): Shared,
    write: Write,
    Path(name): Path<String>,
    OptionalJson(body): OptionalJson<Promote>,
) -> Result<Revisioned<Promoted>, ApiError> {
    // The summary names the version only once it is known; the edit finds it.
    let (_, doc) = s.stored().await?;
    let mut probe = doc;
    let (_, target) = edit::promote(&mut probe, &name, body.version.as_deref())?;
    let summary = format!("promote {name}: {target} is stable");
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::promote(doc, &name, Some(&target))?)
        })
        .await?;
    let (previous_stable, stable) = applied.value;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        Promoted {
            service: name,
            stable,
            previous_stable,
        },
    ))
}

async fn rollback(
    write: Write,
    Path(name): Path<String>,
    OptionalJson(body): OptionalJson<Rollback>,
) -> Result<Revisioned<RolledBack>, ApiError> {
    let summary = if body.clear_rules {
        format!("rollback {name} (rules cleared)")
    } else {
        format!("rollback {name}")
    };
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::rollback(doc, &name, body.clear_rules)?)
        })
        .await?;
    let r = applied.value;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        RolledBack {
            service: name,
            stable: r.stable,
            demoted: r.demoted,
            restored_weight: r.restored_weight,
            rules_cleared: r.rules_cleared,
        },
    ))
}
