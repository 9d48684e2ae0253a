//! `GET, PUT /v1/policy`: the whole policy document at once.

use super::extract::{JsonBody, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, PolicyReplaced, Revisioned, Tagged};
use crate::policy::PolicyDoc;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The routes of the whole policy.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new().route(paths::POLICY, get(get_policy).put(put_policy))
}

async fn get_policy(State(s): Shared) -> Result<Tagged<PolicyDoc>, ApiError> {
    let (revision, doc) = s.stored().await?;
    Ok(Tagged {
        revision: revision.into(),
        body: doc,
    })
}

async fn put_policy(
    write: Write,
    JsonBody(doc): JsonBody<PolicyDoc>,
) -> Result<Revisioned<PolicyReplaced>, ApiError> {
    let applied = write
        .apply("policy replaced", |current| {
            current.clone_from(&doc);
            Ok(())
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        PolicyReplaced {
            policy: applied.doc,
        },
    ))
}
