//! The two rollout steps: promote (a version becomes stable, everyone not sent elsewhere goes
//! there; rules, `by` and salt stay) and rollback (the last promote undone exactly if no new
//! canary started since, else the canary's weights to 0). Each moves the stable version and the
//! split at once, so they are actions on a service rather than edits of one resource; the edits
//! are [`crate::policy::edit::promote`] and [`crate::policy::edit::rollback`], and
//! `docs/admin-api.md#rollout-semantics` says what they do for an operator.
//!
//! While a rollout carries a version of the service ([`machine::in_charge`]), both go through
//! the rollout instead: a promote of that version ends it as promoted, a rollback aborts it, so
//! that its driver never undoes the operator's step at its next tick.

use super::extract::{OptionalJson, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, Promote, Promoted, Revisioned, Rollback, RolledBack};
use crate::gateway::now_ms;
use crate::policy::edit;
use crate::rollout::machine;
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
    let who = write.caller().to_string();
    let now = now_ms();
    let applied = write
        .apply(&summary, |doc| {
            // A rollout carrying a version: promoting it by hand ends the rollout as promoted
            // (its guard still runs); promoting another version would fight it.
            if let Some(carried) = machine::in_charge(doc, &name) {
                if carried != target {
                    return Err(ApiError::invalid(
                        "version",
                        format!(
                            "a rollout of `{name}` is carrying {carried}: promote that one, or abort the rollout (`graygate ctl rollout abort --service {name}`) first"
                        ),
                    ));
                }
                let old = doc
                    .services
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.stable.clone())
                    .unwrap_or_default();
                machine::promote(doc, &name, format!("promoted by {who}"), now)?;
                return Ok((old, target.clone()));
            }
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
    let who = write.caller().to_string();
    let now = now_ms();
    let applied = write
        .apply(&summary, |doc| {
            // A rollout in charge: the rollback aborts it (the canary's weight to 0, and during
            // the post-promotion guard the old stable version back), so that its driver does not
            // raise the weight again at the next step.
            if machine::in_charge(doc, &name).is_some() {
                let before = doc.services.iter().find(|s| s.name == name).cloned();
                machine::abort(doc, &name, format!("rolled back by {who}"), now)?;
                let svc = doc.services.iter_mut().find(|s| s.name == name);
                let (Some(before), Some(svc)) = (before, svc) else {
                    return Err(ApiError::not_found(format!("no service `{name}`")));
                };
                let rules_cleared = if body.clear_rules {
                    std::mem::take(&mut svc.rules).len()
                } else {
                    0
                };
                return Ok(edit::Rollback {
                    stable: svc.stable.clone(),
                    demoted: (before.stable != svc.stable).then(|| before.stable.clone()),
                    restored_weight: None,
                    rules_cleared,
                });
            }
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
