//! Every change of the policy, newest first, a page at a time; one change with its documents; and
//! undo: the policy of an earlier revision made current again, as a new revision (history is never
//! rewritten).
//!
//! A page (`GET /v1/history`) holds at most [`HistoryQuery::MAX_LIMIT`] changes and never a
//! document, so that its size does not grow with the policy's: the documents of one change come
//! from `GET /v1/history/{revision}`, rebuilt from the stored policy and the records since.

use super::extract::{JsonBody, Query, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, ErrorCode, History, HistoryOne, HistoryQuery, Revisioned, Undo, Undone};
use crate::gateway::HistoryError;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// The routes of history and undo.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::HISTORY, get(history))
        .route(paths::HISTORY_ONE, get(history_one))
        .route(paths::UNDO, post(undo))
}

/// `GET /v1/history[?limit=N][&before=R]`: the newest `N` changes (default 20, at most 100)
/// older than revision `R`, newest first, with the path of the next page.
async fn history(
    State(s): Shared,
    Query(query): Query<HistoryQuery>,
) -> Result<Revisioned<History>, ApiError> {
    let limit = query.limit.unwrap_or(HistoryQuery::DEFAULT_LIMIT);
    if limit > HistoryQuery::MAX_LIMIT {
        return Err(ApiError::invalid(
            "limit",
            format!(
                "{limit} is over the largest page of {} changes: follow `next` for older ones",
                HistoryQuery::MAX_LIMIT
            ),
        ));
    }
    let (entries, next) = s.gateway.history_page(query.before, limit).await?;
    let next = next.map(|before| {
        paths::history(&HistoryQuery {
            limit: Some(limit),
            before: Some(before),
        })
    });
    Ok(Revisioned::new(
        s.gateway.revision(),
        History { entries, next },
    ))
}

/// `GET /v1/history/{revision}`: the change that made `revision`, with its documents.
async fn history_one(
    State(s): Shared,
    Path(revision): Path<String>,
) -> Result<Revisioned<HistoryOne>, ApiError> {
    let revision = parse_revision(&revision)?;
    let entry = s.gateway.history_entry(revision).await?;
    Ok(Revisioned::new(s.gateway.revision(), HistoryOne { entry }))
}

async fn undo(
    State(s): Shared,
    write: Write,
    JsonBody(body): JsonBody<Undo>,
) -> Result<Revisioned<Undone>, ApiError> {
    let entry = s.gateway.history_entry(body.revision).await?;
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

/// A revision in a path: a whole number from 1.
fn parse_revision(text: &str) -> Result<u64, ApiError> {
    match text.parse::<u64>() {
        Ok(revision) if revision > 0 => Ok(revision),
        _ => Err(ApiError::invalid(
            "revision",
            format!("`{text}` is not a revision (a whole number from 1)"),
        )),
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::NotInHistory { .. } => ApiError::not_found(e.to_string()),
            HistoryError::Broken { .. } => ApiError::new(ErrorCode::StoreBadData, e.to_string()),
            HistoryError::Gap { .. } => ApiError::not_found(e.to_string()),
            HistoryError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_in_a_path_is_a_whole_number_from_one() {
        assert_eq!(parse_revision("12").unwrap(), 12);
        for bad in ["0", "-1", "x", "", "99999999999999999999999"] {
            let e = parse_revision(bad).unwrap_err();
            assert_eq!(
                e.message(),
                format!("revision: `{bad}` is not a revision (a whole number from 1)")
            );
        }
    }
}
