//! `POST /v1/reload[?force=true]`: reads the config file again, exactly as SIGHUP does, and
//! answers what that did to each part (see [`crate::reload`]). An invalid file reloads nothing
//! (422 with the file, line and field); a part that was refused (an upstream the running policy
//! still uses, the config's policy over a rollout in progress) is said in the answer, which is
//! 200 either way: the other parts were applied.

use super::extract::Query;
use super::{AdminState, ApiError, Caller, Shared};
use crate::api::{paths, ErrorCode, ReloadQuery, Reloaded};
use crate::reload::log_reloaded;
use axum::extract::State;
use axum::routing::post;
use axum::{Extension, Json, Router};
use std::sync::Arc;

/// The route of reload.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new().route(paths::RELOAD, post(reload))
}

async fn reload(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ReloadQuery>,
) -> Result<Json<Reloaded>, ApiError> {
    let Some(reloader) = s.reloader.get() else {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            "this graygate was not started from a config file: there is nothing to reload",
        ));
    };
    let trigger = format!("reload by {}", caller.0);
    match reloader.reload(query.force, &trigger).await {
        Ok(reloaded) => {
            log_reloaded(&trigger, &reloaded);
            Ok(Json(reloaded))
        }
        Err(e) => {
            tracing::error!(error = %e, "{trigger}: nothing reloaded");
            Err(ApiError::new(ErrorCode::Invalid, e.to_string()))
        }
    }
}
