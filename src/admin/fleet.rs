//! `GET /v1/fleet` (every live instance), `POST /v1/fleet/restore` (write this instance's policy
//! back into a store that lost it), and the count of instances that applied a change, added to
//! every change's answer ([`applied_by`]).

use super::{AdminState, ApiError, Shared};
use crate::api::{paths, ErrorCode, Fleet, Revision};
use crate::gateway::GatewayError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderName, HeaderValue, Method};
use std::sync::Arc;

/// The routes of the fleet.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::FLEET, get(fleet))
        .route(paths::FLEET_RESTORE, post(restore))
}

async fn fleet(State(s): Shared) -> Result<Json<Fleet>, ApiError> {
    Ok(Json(s.gateway.fleet_view().await?))
}

/// Answers with the fleet view after the restore.
async fn restore(State(s): Shared) -> Result<Json<Fleet>, ApiError> {
    match s.gateway.restore_now().await {
        Ok(_) => Ok(Json(s.gateway.fleet_view().await?)),
        Err(GatewayError::Store(e)) => Err(e.into()),
        Err(e @ GatewayError::NotBehind { .. }) => {
            Err(ApiError::new(ErrorCode::Invalid, e.to_string()))
        }
        Err(e) => Err(ApiError::new(ErrorCode::StoreUnavailable, e.to_string())),
    }
}

/// After a change that succeeded (any method but `GET` with an `ETag`): how many live instances
/// report its revision, waiting for all of them when the query says `wait=<duration>`; sent in
/// [`paths::APPLIED_HEADER`].
pub async fn applied_by(State(s): Shared, request: Request, next: Next) -> Response {
    // Explaining a request changes nothing, though it is a POST.
    let change = request.method() != Method::GET
        && request.method() != Method::HEAD
        && request.uri().path() != paths::EXPLAIN;
    let wait = request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == paths::WAIT_PARAM)
            .and_then(|(_, v)| humantime::parse_duration(v).ok())
            .map(|d| d.min(paths::MAX_WAIT))
    });
    let mut response = next.run(request).await;
    if !change || !response.status().is_success() {
        return response;
    }
    let Some(revision) = response
        .headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Revision::parse_tag(v).ok())
    else {
        return response;
    };
    let applied = s.gateway.applied_by(revision.0, wait).await;
    let json = serde_json::to_string(&applied).expect("a count serializes");
    if let Ok(value) = HeaderValue::from_bytes(json.as_bytes()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(paths::APPLIED_HEADER), value);
    }
    response
}
