//! Rules of a service, in the order they are tried: list, read, add (last or at a position),
//! replace in place (a rule may be renamed), delete.

use super::extract::{JsonBody, Query, Write};
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, Revisioned, RuleDeleted, RuleList, RuleQuery, RuleWritten, Tagged};
use crate::policy::edit;
use crate::policy::model::RuleDoc;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::sync::Arc;

/// The routes of rules.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::RULES, get(list).post(add))
        .route(paths::RULE, get(get_one).put(replace).delete(delete))
}

async fn list(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Revisioned<RuleList>, ApiError> {
    let (revision, mut doc) = s.stored().await?;
    let svc = doc.services.swap_remove(edit::service_index(&doc, &name)?);
    Ok(Revisioned::new(
        revision,
        RuleList {
            service: name,
            rules: svc.rules,
        },
    ))
}

async fn get_one(
    State(s): Shared,
    Path((name, rule)): Path<(String, String)>,
) -> Result<Tagged<RuleDoc>, ApiError> {
    let (revision, mut doc) = s.stored().await?;
    let (service, at) = edit::rule_index(&doc, &name, &rule)?;
    let found = doc.services.swap_remove(service).rules.swap_remove(at);
    Ok(Tagged {
        revision: revision.into(),
        body: found,
    })
}

/// `POST /v1/services/{name}/rules[?position=N]`: a new rule, last or at position `N` (0 first).
async fn add(
    write: Write,
    Path(name): Path<String>,
    Query(query): Query<RuleQuery>,
    JsonBody(rule): JsonBody<RuleDoc>,
) -> Result<(StatusCode, Revisioned<RuleWritten>), ApiError> {
    let summary = format!("rule {name}/{} added -> {}", rule.name, rule.version);
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::add_rule(doc, &name, rule.clone(), query.position)?)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Revisioned::change(
            applied.revision,
            applied.unchanged,
            RuleWritten {
                service: name,
                rule,
            },
        ),
    ))
}

async fn replace(
    write: Write,
    Path((name, old)): Path<(String, String)>,
    JsonBody(rule): JsonBody<RuleDoc>,
) -> Result<Revisioned<RuleWritten>, ApiError> {
    let summary = format!("rule {name}/{old} replaced -> {}", rule.version);
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::replace_rule(doc, &name, &old, rule.clone())?)
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        RuleWritten {
            service: name,
            rule,
        },
    ))
}

async fn delete(
    write: Write,
    Path((name, rule)): Path<(String, String)>,
) -> Result<Revisioned<RuleDeleted>, ApiError> {
    let applied = write
        .apply(&format!("rule {name}/{rule} deleted"), |doc| {
            Ok(edit::delete_rule(doc, &name, &rule)?)
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        RuleDeleted {
            service: name,
            deleted: applied.value,
        },
    ))
}
