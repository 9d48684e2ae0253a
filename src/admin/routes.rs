//! Routes (host and path prefix -> service), addressed by their name (the service's name when
//! they have none). Plain create, read, replace, delete.

use super::extract::{JsonBody, Write};
use super::reply::created_or_ok;
use super::{AdminState, ApiError, Shared};
use crate::api::{paths, Revisioned, RouteCreated, RouteDeleted, RouteList, RoutePut, Tagged};
use crate::policy::edit::{self, route_name};
use crate::policy::model::RouteDoc;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::sync::Arc;

/// The routes of routes.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::ROUTES, get(list).post(create))
        .route(paths::ROUTE, get(get_one).put(put).delete(delete))
}

/// A route as shown: with the name it is addressed by.
fn named(route: &RouteDoc) -> RouteDoc {
    let mut r = route.clone();
    r.name = Some(route_name(route).to_string());
    r
}

async fn list(State(s): Shared) -> Result<Revisioned<RouteList>, ApiError> {
    let (revision, doc) = s.stored().await?;
    let routes = doc.routes.iter().map(named).collect();
    Ok(Revisioned::new(revision, RouteList { routes }))
}

async fn get_one(State(s): Shared, Path(name): Path<String>) -> Result<Tagged<RouteDoc>, ApiError> {
    let (revision, doc) = s.stored().await?;
    let i = edit::route_index(&doc, &name)?;
    Ok(Tagged {
        revision: revision.into(),
        body: named(&doc.routes[i]),
    })
}

async fn create(
    write: Write,
    JsonBody(route): JsonBody<RouteDoc>,
) -> Result<(StatusCode, Revisioned<RouteCreated>), ApiError> {
    let summary = format!("route {} created", route_name(&route));
    let applied = write
        .apply(&summary, |doc| Ok(edit::create_route(doc, route.clone())?))
        .await?;
    let route = named(&route);
    Ok((
        StatusCode::CREATED,
        Revisioned::change(applied.revision, applied.unchanged, RouteCreated { route }),
    ))
}

async fn put(
    write: Write,
    Path(name): Path<String>,
    JsonBody(route): JsonBody<RouteDoc>,
) -> Result<(StatusCode, Revisioned<RoutePut>), ApiError> {
    let applied = write
        .apply(&format!("route {name} put"), |doc| {
            Ok(edit::put_route(doc, &name, route.clone())?)
        })
        .await?;
    let i = edit::route_index(&applied.doc, &name)?;
    let created = applied.value;
    Ok((
        created_or_ok(created),
        Revisioned::change(
            applied.revision,
            applied.unchanged,
            RoutePut {
                created,
                route: named(&applied.doc.routes[i]),
            },
        ),
    ))
}

async fn delete(
    write: Write,
    Path(name): Path<String>,
) -> Result<Revisioned<RouteDeleted>, ApiError> {
    let applied = write
        .apply(&format!("route {name} deleted"), |doc| {
            Ok(edit::delete_route(doc, &name)?)
        })
        .await?;
    let deleted = named(&applied.value);
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        RouteDeleted { deleted },
    ))
}
