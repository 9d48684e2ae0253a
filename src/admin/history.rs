//! Every change of the policy, newest first, and undo: the policy of an earlier revision made
//! current again, as a new revision (history is never rewritten).

use super::extract::{JsonBody, Query, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, History, HistoryQuery, Revisioned, Undo, Undone};
use crate::store::HISTORY_LIMIT;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// The routes of history and undo.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::HISTORY, get(history))
        .route(paths::UNDO, post(undo))
}

/// `GET /v1/history[?limit=N]`: the newest `N` changes (default 20), newest first.
async fn history(
    State(s): Shared,
    Query(query): Query<HistoryQuery>,
) -> Result<Revisioned<History>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(HistoryQuery::DEFAULT_LIMIT)
        .min(HISTORY_LIMIT);
    let entries = s.gateway.history(limit).await?;
    Ok(Revisioned::new(s.gateway.revision(), History { entries }))
}

async fn undo(
    State(s): Shared,
    write: Write,
    JsonBody(body): JsonBody<Undo>,
) -> Result<Revisioned<Undone>, ApiError> {
    let entries = s.gateway.history(HISTORY_LIMIT).await?;
    let Some(entry) = entries.into_iter().find(|e| e.revision == body.revision) else {
        return Err(ApiError::not_found(format!(
            "revision {} is not in the history (it keeps the newest {HISTORY_LIMIT} changes)",
            body.revision
        )));
    };
    let summary = format!("undo to revision {}", body.revision);
    let applied = write.restore(&summary, &entry.after).await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        Undone {
            restored: body.revision,
            policy: applied.doc,
        },
    ))
}
