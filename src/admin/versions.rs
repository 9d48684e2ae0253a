//! Versions of a service: version name -> the upstream that serves it. The stable version cannot
//! be deleted; a version a rule still sends to makes the change fail naming the rule.

use super::extract::{JsonBody, Write};
use super::reply::created_or_ok;
use super::{AdminState, ApiError, Shared};
use crate::api::{
    paths, NewVersion, Revisioned, SetVersion, Tagged, Version, VersionDeleted, VersionList,
    VersionPut,
};
use crate::policy::edit;
use crate::policy::model::ServiceDoc;
use crate::policy::PolicyDoc;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::sync::Arc;

/// The routes of versions.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::VERSIONS, get(list).post(create))
        .route(paths::VERSION, get(get_one).put(put).delete(delete))
}

/// Version `name` of `svc`, served by `upstream`.
fn version(svc: &ServiceDoc, name: &str, upstream: &str) -> Version {
    Version {
        service: svc.name.clone(),
        name: name.to_string(),
        upstream: upstream.to_string(),
        stable: svc.stable == name,
    }
}

/// Service `name` of `doc`.
fn service<'d>(doc: &'d PolicyDoc, name: &str) -> Result<&'d ServiceDoc, ApiError> {
    Ok(&doc.services[edit::service_index(doc, name)?])
}

async fn list(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Revisioned<VersionList>, ApiError> {
    let (revision, mut doc) = s.stored().await?;
    let svc = doc.services.swap_remove(edit::service_index(&doc, &name)?);
    Ok(Revisioned::new(
        revision,
        VersionList {
            service: name,
            stable: svc.stable,
            versions: svc.versions,
        },
    ))
}

async fn get_one(
    State(s): Shared,
    Path((name, v)): Path<(String, String)>,
) -> Result<Tagged<Version>, ApiError> {
    let (revision, doc) = s.stored().await?;
    let svc = service(&doc, &name)?;
    let upstream = svc
        .versions
        .get(&v)
        .ok_or_else(|| ApiError::not_found(format!("service `{name}` has no version `{v}`")))?;
    Ok(Tagged {
        revision: revision.into(),
        body: version(svc, &v, upstream),
    })
}

async fn create(
    write: Write,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<NewVersion>,
) -> Result<(StatusCode, Revisioned<Version>), ApiError> {
    let summary = format!("version {name}/{} created -> {}", body.name, body.upstream);
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::create_version(
                doc,
                &name,
                &body.name,
                body.upstream.clone(),
            )?)
        })
        .await?;
    let created = version(service(&applied.doc, &name)?, &body.name, &body.upstream);
    Ok((
        StatusCode::CREATED,
        Revisioned::change(applied.revision, applied.unchanged, created),
    ))
}

async fn put(
    write: Write,
    Path((name, v)): Path<(String, String)>,
    JsonBody(body): JsonBody<SetVersion>,
) -> Result<(StatusCode, Revisioned<VersionPut>), ApiError> {
    let summary = format!("version {name}/{v} -> {}", body.upstream);
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::put_version(doc, &name, &v, body.upstream.clone())?)
        })
        .await?;
    let created = applied.value;
    Ok((
        created_or_ok(created),
        Revisioned::change(
            applied.revision,
            applied.unchanged,
            VersionPut {
                version: version(service(&applied.doc, &name)?, &v, &body.upstream),
                created,
            },
        ),
    ))
}

async fn delete(
    write: Write,
    Path((name, v)): Path<(String, String)>,
) -> Result<Revisioned<VersionDeleted>, ApiError> {
    let applied = write
        .apply(&format!("version {name}/{v} deleted"), |doc| {
            Ok(edit::delete_version(doc, &name, &v)?)
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        VersionDeleted {
            service: name,
            deleted: v,
        },
    ))
}
