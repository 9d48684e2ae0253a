//! Services (stable version, versions, rules, split), as whole documents. Plain create, read,
//! replace, delete; a service a route leads to cannot be deleted.

use super::extract::{JsonBody, Write};
use super::reply::created_or_ok;
use super::{AdminState, ApiError, Shared};
use crate::api::{
    paths, Revisioned, ServiceCreated, ServiceDeleted, ServiceList, ServicePut, Tagged,
};
use crate::policy::edit;
use crate::policy::model::ServiceDoc;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::sync::Arc;

/// The routes of services.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::SERVICES, get(list).post(create))
        .route(paths::SERVICE, get(get_one).put(put).delete(delete))
}

async fn list(State(s): Shared) -> Result<Revisioned<ServiceList>, ApiError> {
    let (revision, doc) = s.stored().await?;
    Ok(Revisioned::new(
        revision,
        ServiceList {
            services: doc.services,
        },
    ))
}

async fn get_one(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Tagged<ServiceDoc>, ApiError> {
    let (revision, mut doc) = s.stored().await?;
    let i = edit::service_index(&doc, &name)?;
    Ok(Tagged {
        revision: revision.into(),
        body: doc.services.swap_remove(i),
    })
}

async fn create(
    write: Write,
    JsonBody(service): JsonBody<ServiceDoc>,
) -> Result<(StatusCode, Revisioned<ServiceCreated>), ApiError> {
    let summary = format!("service {} created", service.name);
    let applied = write
        .apply(&summary, |doc| {
            Ok(edit::create_service(doc, service.clone())?)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Revisioned::change(
            applied.revision,
            applied.unchanged,
            ServiceCreated { service },
        ),
    ))
}

async fn put(
    write: Write,
    Path(name): Path<String>,
    JsonBody(service): JsonBody<ServiceDoc>,
) -> Result<(StatusCode, Revisioned<ServicePut>), ApiError> {
    let applied = write
        .apply(&format!("service {name} put"), |doc| {
            Ok(edit::put_service(doc, &name, service.clone())?)
        })
        .await?;
    let created = applied.value;
    Ok((
        created_or_ok(created),
        Revisioned::change(
            applied.revision,
            applied.unchanged,
            ServicePut { created, service },
        ),
    ))
}

async fn delete(
    write: Write,
    Path(name): Path<String>,
) -> Result<Revisioned<ServiceDeleted>, ApiError> {
    let applied = write
        .apply(&format!("service {name} deleted"), |doc| {
            Ok(edit::delete_service(doc, &name)?)
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        ServiceDeleted {
            deleted: applied.value,
        },
    ))
}
