//! A service's rollout: start one, see where it is (with the current window's figures and the
//! recorded verdicts), and drive it by hand: pause, resume, promote, abort, retry.
//!
//! Every action is a change of the policy document through [`Write::apply`], made with the same
//! transitions the driver uses ([`crate::rollout::machine`]), so that the admin API, the driver
//! and routing read one truth. See `docs/rollouts.md`.

use super::extract::{JsonBody, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{
    paths, MoreRequests, Revisioned, RolloutView, StartRollout, VersionFigures, WindowView,
};
use crate::gateway::now_ms;
use crate::policy::edit;
use crate::policy::model::ServiceDoc;
use crate::policy::PolicyDoc;
use crate::rollout::machine;
use crate::rollout::record::{rollout_key, WorkingRecord};
use crate::rollout::{Figures, RolloutDoc, RolloutState};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The routes of rollouts.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::ROLLOUT, get(get_rollout).post(start))
        .route(paths::ROLLOUT_ACTION, post(action))
}

/// RFC 3339 of a time in ms since the Unix epoch.
fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One version's figures as the status shows them.
fn figures(version: &str, f: &Figures) -> VersionFigures {
    let ms = |q: f64| {
        f.quantile(q)
            .map(|d| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0)
    };
    VersionFigures {
        version: version.to_string(),
        requests: f.requests,
        errors: f.errors,
        error_percent: if f.requests == 0 {
            0.0
        } else {
            (f.errors as f64 * 100.0 / f.requests as f64 * 100.0).round() / 100.0
        },
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

/// The driver's record of this run of `service`'s rollout (not of an earlier one), if any.
pub(super) async fn working_record(
    s: &AdminState,
    service: &str,
    plan: &RolloutDoc,
) -> Result<Option<WorkingRecord>, ApiError> {
    let run = plan.status.as_ref().map(|st| st.started_ms);
    Ok(s.gateway
        .store()
        .get_record(&rollout_key(service))
        .await?
        .and_then(|json| serde_json::from_str::<WorkingRecord>(&json).ok())
        .filter(|r| Some(r.started_ms) == run))
}

/// The weight of the version `plan` rolls out, in percent: 100 once promoted.
pub(super) fn canary_weight(svc: &ServiceDoc, plan: &RolloutDoc) -> f64 {
    match plan.status.as_ref().map(|st| st.state) {
        Some(RolloutState::Promoted) => 100.0,
        _ => svc
            .split
            .as_ref()
            .and_then(|sp| sp.weights.get(&plan.version))
            .copied()
            .unwrap_or(0.0),
    }
}

/// The rollout of `service` in `doc` with the driver's working record.
pub(super) async fn view(
    s: &AdminState,
    doc: &PolicyDoc,
    service: &str,
) -> Result<RolloutView, ApiError> {
    let svc = &doc.services[edit::service_index(doc, service)?];
    let Some(plan) = svc.rollout.clone() else {
        return Err(ApiError::not_found(format!(
            "service `{service}` has no rollout; start one with `graygate ctl rollout start --service {service} --version V`"
        )));
    };
    let record = working_record(s, service, &plan).await?;
    let status = plan.status.clone();
    let state = status.as_ref().map(|st| st.state);
    let weight = canary_weight(svc, &plan);
    // A record left from an earlier rollout, or from before the current step, is not shown
    // as the current window.
    let current = record.as_ref().filter(|r| {
        status.as_ref().is_some_and(|st| {
            r.window.key.step == st.step && r.window.key.step_started_ms == st.step_started_ms
        })
    });
    // A rollout that ended (aborted, or promoted with its guard over) adds nothing to its last
    // window any more: that window ended when the rollout did.
    let ended = status.as_ref().filter(|st| {
        st.state == RolloutState::Aborted
            || (st.state == RolloutState::Promoted && st.guard_until_ms.is_none())
    });
    let window_end = ended.map_or_else(now_ms, |st| st.since_ms);
    // A window opened when the rollout ended (the guard's end starts none worth showing) is none.
    let window = current
        .filter(|r| r.window.started_ms < window_end)
        .map(|r| {
            let guarding = state == Some(RolloutState::Promoted) || weight >= 100.0;
            let stable_version = if state == Some(RolloutState::Promoted) {
                svc.previous_stable.clone().unwrap_or_default()
            } else {
                svc.stable.clone()
            };
            let stable = if guarding {
                r.last_stable.clone().unwrap_or_default()
            } else {
                r.window.of(&svc.stable)
            };
            WindowView {
                started: time(r.window.started_ms),
                seconds: window_end.saturating_sub(r.window.started_ms) as f64 / 1000.0,
                canary: figures(&plan.version, &r.window.of(&plan.version)),
                stable: figures(&stable_version, &stable),
            }
        });
    let verdicts = record
        .as_ref()
        .map(|r| r.verdicts.clone())
        .unwrap_or_default();
    // Only while the rollout waits on a step: an ended or paused one needs nothing more.
    let analysing = matches!(
        state,
        Some(RolloutState::Progressing | RolloutState::Waiting)
    );
    let more_requests = window
        .as_ref()
        .filter(|_| analysing)
        .map(|w| {
            let need = plan.analysis.min_requests;
            MoreRequests {
                canary: need.saturating_sub(w.canary.requests),
                stable: need.saturating_sub(w.stable.requests),
            }
        })
        .filter(|m| m.canary > 0 || m.stable > 0);
    Ok(RolloutView {
        service: service.to_string(),
        version: plan.version.clone(),
        state,
        step: status.as_ref().map_or(0, |st| st.step + 1),
        steps: plan.steps.len(),
        weight,
        reason: status
            .as_ref()
            .map(|st| st.reason.clone())
            .unwrap_or_default(),
        since: status.as_ref().map(|st| time(st.since_ms)),
        step_started: status.as_ref().map(|st| time(st.step_started_ms)),
        guard_until: status.as_ref().and_then(|st| st.guard_until_ms).map(time),
        failures: current.map_or(0, |r| r.failures),
        driver: record.as_ref().map(|r| r.driver.clone()),
        window,
        more_requests,
        verdicts,
        plan,
    })
}

async fn get_rollout(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Revisioned<RolloutView>, ApiError> {
    let (revision, doc) = s.stored().await?;
    Ok(Revisioned::new(revision, view(&s, &doc, &name).await?))
}

async fn start(
    State(s): Shared,
    write: Write,
    Path(name): Path<String>,
    JsonBody(plan): JsonBody<StartRollout>,
) -> Result<Revisioned<RolloutView>, ApiError> {
    if plan.status.is_some() {
        return Err(ApiError::invalid(
            "status",
            "the status of a rollout is graygate's to set: leave it out",
        ));
    }
    let steps: Vec<String> = plan
        .steps
        .iter()
        .map(|st| machine::percent(st.weight))
        .collect();
    let summary = format!(
        "rollout {name}: start {} ({})",
        plan.version,
        steps.join(" -> ")
    );
    let now = now_ms();
    let applied = write
        .apply(&summary, |doc| {
            Ok(machine::start(doc, &name, plan.clone(), now)?)
        })
        .await?;
    Ok(Revisioned::new(
        applied.revision,
        view(&s, &applied.doc, &name).await?,
    ))
}

/// The rollout actions, by their name in the path.
const ACTIONS: [&str; 5] = ["pause", "resume", "promote", "abort", "retry"];

async fn action(
    State(s): Shared,
    write: Write,
    Path((name, action)): Path<(String, String)>,
) -> Result<Revisioned<RolloutView>, ApiError> {
    if !ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::not_found(format!(
            "no rollout action `{action}` (actions: {})",
            ACTIONS.join(", ")
        )));
    }
    let who = write.caller().to_string();
    let summary = format!("rollout {name}: {action} by {who}");
    let now = now_ms();
    let applied = write
        .apply(&summary, |doc| {
            let said = match action.as_str() {
                "pause" => machine::pause(doc, &name, format!("paused by {who}"), now),
                "resume" => machine::resume(doc, &name, now),
                "promote" => machine::promote(doc, &name, format!("requested by {who}"), now),
                "abort" => machine::abort(doc, &name, format!("requested by {who}"), now),
                _ => machine::retry(doc, &name, now),
            };
            Ok(said?)
        })
        .await?;
    Ok(Revisioned::new(
        applied.revision,
        view(&s, &applied.doc, &name).await?,
    ))
}
