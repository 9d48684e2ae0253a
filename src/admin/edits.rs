//! The policy endpoints: the whole policy, routes, services, versions, rules, weights, promote,
//! rollback, history and undo. Reads answer from the stored document with its revision as the
//! `ETag`; every write is one [`Gateway::change`](crate::gateway::Gateway::change).

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{etag, IfMatch, JsonBody, OptionalJson};
use super::AdminState;
use crate::gateway::Applied;
use crate::policy::edit::{self, route_name};
use crate::policy::model::{IdentityDoc, RouteDoc, RuleDoc, ServiceDoc};
use crate::policy::PolicyDoc;
use crate::store::HISTORY_LIMIT;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{header, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

type Shared = State<Arc<AdminState>>;
type Result<T = Response> = std::result::Result<T, ApiError>;

/// A JSON answer about policy revision `revision`.
fn reply(revision: u64, status: StatusCode, body: Value) -> Response {
    (status, [(header::ETAG, etag(revision))], Json(body)).into_response()
}

/// 201 for something created, else 200.
fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// The stored revision and document.
async fn stored(s: &AdminState) -> Result<(u64, PolicyDoc)> {
    s.gateway.current_doc().await.map_err(ApiError::from)
}

/// Makes one change through the gateway, refusing one that adds overlapping ranges.
async fn change<T>(
    s: &AdminState,
    if_match: IfMatch,
    caller: &Caller,
    summary: &str,
    mut edit: impl FnMut(&mut PolicyDoc) -> Result<T>,
) -> Result<Applied<T>> {
    s.gateway
        .change(if_match.0, &caller.0, summary, |doc| {
            let before = doc.clone();
            let value = edit(doc)?;
            edit::check_no_new_overlaps(&before, doc)?;
            Ok(value)
        })
        .await
        .map_err(ApiError::from)
}

/// Parses `a=1&b=2` (no percent-decoding: the parameters here are numbers and flags).
fn query_param(query: &Option<String>, name: &str) -> Option<String> {
    query.as_deref()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

fn query_number(query: &Option<String>, name: &str) -> Result<Option<usize>> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::at(
                StatusCode::BAD_REQUEST,
                "bad_request",
                name,
                format!("`{v}` is not a whole number"),
            )
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The whole policy

pub async fn get_policy(State(s): Shared) -> Result {
    let (revision, doc) = stored(&s).await?;
    Ok(reply(revision, StatusCode::OK, json!(doc)))
}

pub async fn put_policy(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    JsonBody(doc): JsonBody<PolicyDoc>,
) -> Result {
    let applied = change(&s, if_match, &caller, "policy replaced", |current| {
        current.clone_from(&doc);
        Ok(())
    })
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "policy": applied.doc }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Routes

/// A route as listed: with the name it is addressed by.
fn named(route: &RouteDoc) -> RouteDoc {
    let mut r = route.clone();
    r.name = Some(route_name(route).to_string());
    r
}

pub async fn list_routes(State(s): Shared) -> Result {
    let (revision, doc) = stored(&s).await?;
    let routes: Vec<RouteDoc> = doc.routes.iter().map(named).collect();
    Ok(reply(
        revision,
        StatusCode::OK,
        json!({ "revision": revision, "routes": routes }),
    ))
}

pub async fn get_route(State(s): Shared, Path(name): Path<String>) -> Result {
    let (revision, doc) = stored(&s).await?;
    let i = edit::route_index(&doc, &name)?;
    Ok(reply(
        revision,
        StatusCode::OK,
        json!(named(&doc.routes[i])),
    ))
}

pub async fn create_route(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    JsonBody(route): JsonBody<RouteDoc>,
) -> Result {
    let summary = format!("route {} created", route_name(&route));
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::create_route(doc, route.clone())?)
    })
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::CREATED,
        json!({ "revision": applied.revision, "route": named(&route) }),
    ))
}

pub async fn put_route(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
    JsonBody(route): JsonBody<RouteDoc>,
) -> Result {
    let applied = change(&s, if_match, &caller, &format!("route {name} put"), |doc| {
        Ok(edit::put_route(doc, &name, route.clone())?)
    })
    .await?;
    let i = edit::route_index(&applied.doc, &name)?;
    Ok(reply(
        applied.revision,
        created_or_ok(applied.value),
        json!({ "revision": applied.revision, "created": applied.value, "route": named(&applied.doc.routes[i]) }),
    ))
}

pub async fn delete_route(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
) -> Result {
    let applied = change(
        &s,
        if_match,
        &caller,
        &format!("route {name} deleted"),
        |doc| Ok(edit::delete_route(doc, &name)?),
    )
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "deleted": named(&applied.value) }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Services

pub async fn list_services(State(s): Shared) -> Result {
    let (revision, doc) = stored(&s).await?;
    Ok(reply(
        revision,
        StatusCode::OK,
        json!({ "revision": revision, "services": doc.services }),
    ))
}

pub async fn get_service(State(s): Shared, Path(name): Path<String>) -> Result {
    let (revision, doc) = stored(&s).await?;
    let i = edit::service_index(&doc, &name)?;
    Ok(reply(revision, StatusCode::OK, json!(doc.services[i])))
}

pub async fn create_service(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    JsonBody(service): JsonBody<ServiceDoc>,
) -> Result {
    let summary = format!("service {} created", service.name);
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::create_service(doc, service.clone())?)
    })
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::CREATED,
        json!({ "revision": applied.revision, "service": service }),
    ))
}

pub async fn put_service(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
    JsonBody(service): JsonBody<ServiceDoc>,
) -> Result {
    let applied = change(
        &s,
        if_match,
        &caller,
        &format!("service {name} put"),
        |doc| Ok(edit::put_service(doc, &name, service.clone())?),
    )
    .await?;
    Ok(reply(
        applied.revision,
        created_or_ok(applied.value),
        json!({ "revision": applied.revision, "created": applied.value, "service": service }),
    ))
}

pub async fn delete_service(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
) -> Result {
    let applied = change(
        &s,
        if_match,
        &caller,
        &format!("service {name} deleted"),
        |doc| Ok(edit::delete_service(doc, &name)?),
    )
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "deleted": applied.value }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Versions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionBody {
    /// The upstream (of the startup config) that serves the version.
    upstream: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersionBody {
    name: String,
    upstream: String,
}

fn version_json(service: &ServiceDoc, name: &str, upstream: &str) -> Value {
    json!({
        "service": service.name,
        "name": name,
        "upstream": upstream,
        "stable": service.stable == name,
    })
}

pub async fn list_versions(State(s): Shared, Path(name): Path<String>) -> Result {
    let (revision, doc) = stored(&s).await?;
    let svc = &doc.services[edit::service_index(&doc, &name)?];
    Ok(reply(
        revision,
        StatusCode::OK,
        json!({ "revision": revision, "service": name, "stable": svc.stable, "versions": svc.versions }),
    ))
}

pub async fn get_version(
    State(s): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result {
    let (revision, doc) = stored(&s).await?;
    let svc = &doc.services[edit::service_index(&doc, &name)?];
    let upstream = svc.versions.get(&version).ok_or_else(|| {
        ApiError::not_found(format!("service `{name}` has no version `{version}`"))
    })?;
    Ok(reply(
        revision,
        StatusCode::OK,
        version_json(svc, &version, upstream),
    ))
}

pub async fn create_version(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<NewVersionBody>,
) -> Result {
    let summary = format!("version {name}/{} created -> {}", body.name, body.upstream);
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::create_version(
            doc,
            &name,
            &body.name,
            body.upstream.clone(),
        )?)
    })
    .await?;
    let svc = &applied.doc.services[edit::service_index(&applied.doc, &name)?];
    let mut out = version_json(svc, &body.name, &body.upstream);
    out["revision"] = json!(applied.revision);
    Ok(reply(applied.revision, StatusCode::CREATED, out))
}

pub async fn put_version(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path((name, version)): Path<(String, String)>,
    JsonBody(body): JsonBody<VersionBody>,
) -> Result {
    let summary = format!("version {name}/{version} -> {}", body.upstream);
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::put_version(
            doc,
            &name,
            &version,
            body.upstream.clone(),
        )?)
    })
    .await?;
    let svc = &applied.doc.services[edit::service_index(&applied.doc, &name)?];
    let mut out = version_json(svc, &version, &body.upstream);
    out["revision"] = json!(applied.revision);
    out["created"] = json!(applied.value);
    Ok(reply(applied.revision, created_or_ok(applied.value), out))
}

pub async fn delete_version(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path((name, version)): Path<(String, String)>,
) -> Result {
    let summary = format!("version {name}/{version} deleted");
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::delete_version(doc, &name, &version)?)
    })
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "service": name, "deleted": version }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Rules

pub async fn list_rules(State(s): Shared, Path(name): Path<String>) -> Result {
    let (revision, doc) = stored(&s).await?;
    let svc = &doc.services[edit::service_index(&doc, &name)?];
    Ok(reply(
        revision,
        StatusCode::OK,
        json!({ "revision": revision, "service": name, "rules": svc.rules }),
    ))
}

pub async fn get_rule(State(s): Shared, Path((name, rule)): Path<(String, String)>) -> Result {
    let (revision, doc) = stored(&s).await?;
    let svc = &doc.services[edit::service_index(&doc, &name)?];
    let r = svc
        .rules
        .iter()
        .find(|r| r.name == rule)
        .ok_or_else(|| ApiError::not_found(format!("service `{name}` has no rule `{rule}`")))?;
    Ok(reply(revision, StatusCode::OK, json!(r)))
}

/// `POST /v1/services/{name}/rules[?position=N]`: a new rule, last or at position `N` (0 first).
pub async fn add_rule(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    JsonBody(rule): JsonBody<RuleDoc>,
) -> Result {
    let position = query_number(&query, "position")?;
    let summary = format!("rule {name}/{} added -> {}", rule.name, rule.version);
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::add_rule(doc, &name, rule.clone(), position)?)
    })
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::CREATED,
        json!({ "revision": applied.revision, "service": name, "rule": rule }),
    ))
}

pub async fn replace_rule(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path((name, old)): Path<(String, String)>,
    JsonBody(rule): JsonBody<RuleDoc>,
) -> Result {
    let summary = format!("rule {name}/{old} replaced -> {}", rule.version);
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::replace_rule(doc, &name, &old, rule.clone())?)
    })
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "service": name, "rule": rule }),
    ))
}

pub async fn delete_rule(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path((name, rule)): Path<(String, String)>,
) -> Result {
    let summary = format!("rule {name}/{rule} deleted");
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::delete_rule(doc, &name, &rule)?)
    })
    .await?;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "service": name, "deleted": applied.value }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Weights, promote, rollback

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    /// Version -> percent; replaces the previous weights.
    weights: BTreeMap<String, f64>,
    /// The identity that makes the split sticky; kept from before when absent.
    #[serde(default)]
    by: Option<IdentityDoc>,
    #[serde(default)]
    salt: Option<String>,
}

pub async fn get_weights(State(s): Shared, Path(name): Path<String>) -> Result {
    let (revision, doc) = stored(&s).await?;
    let svc = &doc.services[edit::service_index(&doc, &name)?];
    Ok(reply(
        revision,
        StatusCode::OK,
        json!({ "revision": revision, "service": name, "stable": svc.stable, "split": svc.split }),
    ))
}

fn weights_text(weights: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = weights.iter().map(|(v, w)| format!("{v}={w}")).collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

pub async fn set_weights(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<WeightsBody>,
) -> Result {
    let summary = format!("weights {name}: {}", weights_text(&body.weights));
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::set_weights(
            doc,
            &name,
            body.weights.clone(),
            body.by.clone(),
            body.salt.clone(),
        )?)
    })
    .await?;
    let svc = &applied.doc.services[edit::service_index(&applied.doc, &name)?];
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "service": name, "stable": svc.stable, "split": svc.split }),
    ))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The version to promote; default the canary (the only other version, or the only one
    /// with a weight).
    #[serde(default)]
    version: Option<String>,
}

pub async fn promote(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
    OptionalJson(body): OptionalJson<PromoteBody>,
) -> Result {
    // The summary names the version only once it is known; the edit finds it.
    let (_, doc) = stored(&s).await?;
    let mut probe = doc.clone();
    let (_, target) = edit::promote(&mut probe, &name, body.version.as_deref())?;
    let summary = format!("promote {name}: {target} is stable");
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::promote(doc, &name, Some(&target))?)
    })
    .await?;
    let (previous, stable) = applied.value;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "service": name, "stable": stable, "previous_stable": previous }),
    ))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Also delete the service's rules (gray lists stop sending anyone to the canary).
    #[serde(default)]
    clear_rules: bool,
}

pub async fn rollback(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    Path(name): Path<String>,
    OptionalJson(body): OptionalJson<RollbackBody>,
) -> Result {
    let summary = if body.clear_rules {
        format!("rollback {name} (rules cleared)")
    } else {
        format!("rollback {name}")
    };
    let applied = change(&s, if_match, &caller, &summary, |doc| {
        Ok(edit::rollback(doc, &name, body.clear_rules)?)
    })
    .await?;
    let r = applied.value;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({
            "revision": applied.revision,
            "service": name,
            "stable": r.stable,
            "demoted": r.demoted,
            "rules_cleared": r.rules_cleared,
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// History and undo

/// `GET /v1/history[?limit=N]`: the newest `N` changes (default 20), newest first.
pub async fn history(State(s): Shared, RawQuery(query): RawQuery) -> Result {
    let limit = query_number(&query, "limit")?
        .unwrap_or(20)
        .min(HISTORY_LIMIT);
    let entries = s.gateway.history(limit).await?;
    let revision = s.gateway.revision();
    Ok(reply(
        revision,
        StatusCode::OK,
        json!({ "revision": revision, "entries": entries }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndoBody {
    /// The revision whose policy becomes current again (as a new revision).
    revision: u64,
}

pub async fn undo(
    State(s): Shared,
    Extension(caller): Extension<Caller>,
    if_match: IfMatch,
    JsonBody(body): JsonBody<UndoBody>,
) -> Result {
    let entries = s.gateway.history(HISTORY_LIMIT).await?;
    let Some(entry) = entries.into_iter().find(|e| e.revision == body.revision) else {
        return Err(ApiError::not_found(format!(
            "revision {} is not in the history (it keeps the newest {HISTORY_LIMIT} changes)",
            body.revision
        )));
    };
    let summary = format!("undo to revision {}", body.revision);
    // Undo restores a state that was accepted before: only `compile` judges it again (the
    // upstreams may have changed since).
    let applied = s
        .gateway
        .change(if_match.0, &caller.0, &summary, |doc| {
            doc.clone_from(&entry.after);
            Ok(())
        })
        .await?;
    Ok(reply(
        applied.revision,
        StatusCode::OK,
        json!({ "revision": applied.revision, "restored": body.revision, "policy": applied.doc }),
    ))
}
