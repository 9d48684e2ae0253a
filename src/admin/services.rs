//! Services (stable version, versions, rules, split), as whole documents. Plain create, read,
//! replace, delete; a service a route leads to cannot be deleted. And a service's mirror as it
//! runs (copies in flight, the last mismatches of its comparison).

use super::extract::{JsonBody, Write};
use super::reply::created_or_ok;
use super::{AdminState, ApiError, Shared};
use crate::api::{
    paths, MirrorMismatch, MirrorStatus, Revisioned, ServiceCreated, ServiceDeleted, ServiceList,
    ServicePut, Tagged,
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
        .route(paths::MIRROR, get(mirror))
}

/// `GET /v1/services/{name}/mirror`: the running mirror of a service on this instance; 404 when
/// the service has none.
async fn mirror(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<axum::Json<MirrorStatus>, ApiError> {
    let Some(target) = s.gateway.mirror_of(&name) else {
        return Err(ApiError::not_found(format!(
            "service `{name}` has no mirror in the running policy"
        )));
    };
    let m = &target.mirror;
    Ok(axum::Json(MirrorStatus {
        service: m.service.to_string(),
        version: m.version.to_string(),
        in_flight: target.in_flight(),
        max_in_flight: m.max_in_flight,
        compare: m.compare,
        mismatches: target
            .mismatches()
            .into_iter()
            .map(|x| MirrorMismatch {
                at: humantime::format_rfc3339_seconds(x.at).to_string(),
                path: x.path,
                primary_status: x.primary_status,
                mirror_status: x.mirror_status,
                same_body: x.same_body,
            })
            .collect(),
    }))
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
