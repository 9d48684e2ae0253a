//! The weighted split of a service: what share of the requests no rule decided goes to each
//! version (the rest to stable), and what makes it sticky.

use super::extract::{JsonBody, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, Revisioned, SetWeights, Weights};
use crate::policy::edit;
use crate::policy::PolicyDoc;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The routes of weights.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new().route(paths::WEIGHTS, get(get_weights).put(set_weights))
}

/// The split of `service` in `doc`.
fn weights(mut doc: PolicyDoc, service: String) -> Result<Weights, ApiError> {
    let svc = doc
        .services
        .swap_remove(edit::service_index(&doc, &service)?);
    Ok(Weights {
        service,
        stable: svc.stable,
        split: svc.split,
    })
}

async fn get_weights(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Revisioned<Weights>, ApiError> {
    let (revision, doc) = s.stored().await?;
    Ok(Revisioned::new(revision, weights(doc, name)?))
}

/// `canary=10,next=5` for the history.
fn weights_text(weights: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = weights.iter().map(|(v, w)| format!("{v}={w}")).collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

async fn set_weights(
    write: Write,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<SetWeights>,
) -> Result<Revisioned<Weights>, ApiError> {
    let summary = format!("weights {name}: {}", weights_text(&body.weights));
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::set_weights(
                doc,
                &name,
                body.weights.clone(),
                body.by.clone(),
                body.salt.clone(),
            )?)
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        weights(applied.doc, name)?,
    ))
}
