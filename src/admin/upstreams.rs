//! Upstreams: the table this instance runs (its config file's upstreams overlaid by the shared
//! policy's, each with its source, servers, weights and health), and the changes of the shared
//! ones: define or replace, delete, add a server, drain or undrain one, change its weight,
//! remove it. Every change is a policy change ([`Write`]): history, revision, `If-Match`. A
//! definition this instance cannot build (a server line, a CA file) is refused with 422 naming
//! the field (`upstreams.api.servers[1]`) before anything is written.

use super::extract::{JsonBody, Write};
use super::reply::created_or_ok;
use super::{AdminState, ApiError, Shared};
use crate::api::{
    paths, Revisioned, ServerView, ServerWritten, SetServer, UpstreamDeleted, UpstreamList,
    UpstreamPut, UpstreamSource, UpstreamView,
};
use crate::gateway::{EffectiveUpstream, UpstreamOrigin};
use crate::policy::upstreams::{self, ServerDoc, UpstreamDoc};
use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use axum::Router;
use http::StatusCode;
use std::sync::Arc;

/// The routes of upstreams.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::UPSTREAMS, get(list))
        .route(paths::UPSTREAM, get(get_one).put(put).delete(delete))
        .route(paths::UPSTREAM_SERVERS, post(add_server))
        .route(
            paths::UPSTREAM_SERVER,
            patch(set_server).delete(remove_server),
        )
}

/// What this instance runs, with the health of each server.
fn views(s: &AdminState) -> Result<Vec<UpstreamView>, ApiError> {
    let table = s
        .gateway
        .upstream_table()
        .ok_or_else(|| ApiError::internal("this instance has no upstream table to show"))?;
    let live = table.live().current();
    Ok(table
        .upstreams()
        .into_iter()
        .map(|u| view(u, &live))
        .collect())
}

fn view(u: EffectiveUpstream, live: &crate::proxy::Upstreams) -> UpstreamView {
    let servers = match &u.shared {
        Some(doc) => doc
            .servers
            .iter()
            .map(|s| ServerView {
                address: upstreams::server_key(&s.address).to_string(),
                weight: s.weight,
                drained: s.drained,
            })
            .collect(),
        None => u
            .config
            .servers
            .iter()
            .map(|s| ServerView {
                address: s.addr.clone(),
                weight: s.weight,
                drained: s.weight == 0,
            })
            .collect(),
    };
    UpstreamView {
        health: super::status::version_health(live, &u.name),
        source: match u.origin {
            UpstreamOrigin::Config => UpstreamSource::Config,
            UpstreamOrigin::Policy | UpstreamOrigin::PolicyOverConfig => UpstreamSource::Policy,
        },
        replaces_config: u.origin == UpstreamOrigin::PolicyOverConfig,
        protocol: u.config.transport.protocol().as_str().to_string(),
        tls: u.config.transport.tls().is_some(),
        servers,
        definition: u.shared,
        name: u.name,
    }
}

async fn list(State(s): Shared) -> Result<Revisioned<UpstreamList>, ApiError> {
    let upstreams = views(&s)?;
    Ok(Revisioned::new(
        s.gateway.revision(),
        UpstreamList { upstreams },
    ))
}

async fn get_one(
    State(s): Shared,
    Path(name): Path<String>,
) -> Result<Revisioned<UpstreamView>, ApiError> {
    let one = views(&s)?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no upstream named `{name}` on this instance (neither in its config file nor in the policy)"
            ))
        })?;
    Ok(Revisioned::new(s.gateway.revision(), one))
}

async fn put(
    write: Write,
    Path(name): Path<String>,
    JsonBody(upstream): JsonBody<UpstreamDoc>,
) -> Result<(StatusCode, Revisioned<UpstreamPut>), ApiError> {
    let applied = write
        .apply(&format!("upstream {name} defined"), |doc| {
            Ok(upstreams::put_upstream(doc, &name, upstream.clone())?)
        })
        .await?;
    let created = applied.value;
    Ok((
        created_or_ok(created),
        Revisioned::change(
            applied.revision,
            applied.unchanged,
            UpstreamPut {
                created,
                upstream: applied.doc.upstreams[&name].clone(),
                name,
            },
        ),
    ))
}

async fn delete(
    write: Write,
    Path(name): Path<String>,
) -> Result<Revisioned<UpstreamDeleted>, ApiError> {
    let applied = write
        .apply(&format!("upstream {name} deleted"), |doc| {
            Ok(upstreams::delete_upstream(doc, &name)?)
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        UpstreamDeleted {
            name,
            deleted: applied.value,
        },
    ))
}

async fn add_server(
    write: Write,
    Path(name): Path<String>,
    JsonBody(server): JsonBody<ServerDoc>,
) -> Result<(StatusCode, Revisioned<ServerWritten>), ApiError> {
    let summary = format!(
        "upstream {name}: server {} added",
        upstreams::server_key(&server.address)
    );
    let applied = write
        .apply(&summary, |doc| {
            Ok(upstreams::add_server(doc, &name, server.clone())?)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Revisioned::change(
            applied.revision,
            applied.unchanged,
            ServerWritten {
                upstream: applied.doc.upstreams[&name].clone(),
                server,
                name,
            },
        ),
    ))
}

async fn set_server(
    write: Write,
    Path((name, address)): Path<(String, String)>,
    JsonBody(body): JsonBody<SetServer>,
) -> Result<Revisioned<ServerWritten>, ApiError> {
    if body.weight.is_none() && body.drained.is_none() {
        return Err(ApiError::invalid(
            "weight",
            "nothing to change: give `weight`, `drained` or both",
        ));
    }
    let mut what = Vec::new();
    if let Some(w) = body.weight {
        what.push(format!("weight {w}"));
    }
    match body.drained {
        Some(true) => what.push("drained".into()),
        Some(false) => what.push("undrained".into()),
        None => {}
    }
    let summary = format!("upstream {name}: server {address} {}", what.join(", "));
    let applied = write
        .apply(&summary, |doc| {
            Ok(upstreams::set_server(
                doc,
                &name,
                &address,
                body.weight,
                body.drained,
            )?)
        })
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        ServerWritten {
            upstream: applied.doc.upstreams[&name].clone(),
            server: applied.value,
            name,
        },
    ))
}

async fn remove_server(
    write: Write,
    Path((name, address)): Path<(String, String)>,
) -> Result<Revisioned<ServerWritten>, ApiError> {
    let applied = write
        .apply(
            &format!("upstream {name}: server {address} removed"),
            |doc| Ok(upstreams::remove_server(doc, &name, &address)?),
        )
        .await?;
    Ok(Revisioned::change(
        applied.revision,
        applied.unchanged,
        ServerWritten {
            upstream: applied.doc.upstreams[&name].clone(),
            server: applied.value,
            name,
        },
    ))
}
