//! Health, readiness, status and explain: what the gateway is doing, and what it would do.

use super::error::ApiError;
use super::extract::JsonBody;
use super::{AdminState, Shared};
use crate::api::{
    paths, Explain, Explanation, Fallback, Health, MirrorExplained, Readiness, Revision,
    Revisioned, Routed, RuleSummary, ServerHealth, ServerHealthState, ServiceStatus, Status,
    StoreStatus, Traffic, VersionHealth,
};
use crate::policy::{Reason, RequestFacts};
use crate::proxy::{MirrorTarget, Router as DataPlane, ServerState, ServerStatus, Upstreams};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The probes, which need no token.
pub fn probes() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::READYZ, get(readyz))
}

/// Status and explain.
pub fn router() -> Router<Arc<AdminState>> {
    Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::EXPLAIN, post(explain))
}

/// `GET /healthz`: 200 while the process runs.
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
    })
}

/// `GET /readyz`: 200 once a policy is loaded (the admin listener starts after the traffic
/// listeners are bound, so they are up when this answers); 503 before, and while this instance
/// diverged from the store or refuses a store that is behind it.
async fn readyz(State(s): Shared) -> Response {
    if let (Some(_), Some(problem)) = (s.gateway.last_reload(), s.gateway.fleet_problem()) {
        // Diverged, or a store behind that this instance does not restore: it routes, but
        // with another policy than the store's, so the load balancer should prefer the others.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not ready".to_string(),
                revision: Some(Revision(s.gateway.revision())),
                reason: Some(problem),
            }),
        )
            .into_response();
    }
    match s.gateway.last_reload() {
        Some(_) => Json(Readiness {
            status: "ready".to_string(),
            revision: Some(Revision(s.gateway.revision())),
            reason: None,
        })
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not ready".to_string(),
                revision: None,
                reason: Some(
                    "no policy is loaded: the store holds none and the config names none"
                        .to_string(),
                ),
            }),
        )
            .into_response(),
    }
}

/// `GET /v1/status`.
async fn status(State(s): Shared) -> Revisioned<Status> {
    let policy = s.gateway.policy();
    let revision = s.gateway.revision();
    let (counts, rates) = s.traffic();
    let table = s.upstreams.get().map(|u| u.current());
    let services = policy
        .doc()
        .services
        .iter()
        .map(|svc| {
            let traffic = svc
                .versions
                .keys()
                .map(|v| {
                    let requests = counts
                        .get(&svc.name)
                        .and_then(|c| c.get(v))
                        .copied()
                        .unwrap_or(0);
                    let per_second = rates.get(&svc.name).and_then(|r| r.get(v)).copied();
                    (
                        v.clone(),
                        Traffic {
                            requests,
                            per_second,
                        },
                    )
                })
                .collect();
            let rules = svc
                .rules
                .iter()
                .map(|r| RuleSummary {
                    name: r.name.clone(),
                    version: r.version.clone(),
                })
                .collect();
            let health = match &table {
                Some(table) => svc
                    .versions
                    .iter()
                    .filter_map(|(v, upstream)| Some((v.clone(), version_health(table, upstream)?)))
                    .collect(),
                None => Default::default(),
            };
            ServiceStatus {
                name: svc.name.clone(),
                stable: svc.stable.clone(),
                rollback_to: svc.previous_stable.clone(),
                versions: svc.versions.clone(),
                split: svc.split.clone(),
                rules,
                traffic,
                health,
            }
        })
        .collect();
    Revisioned::new(
        revision,
        Status {
            last_reload: s
                .gateway
                .last_reload()
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            store: store_status(&s.gateway),
            services,
            instance: Some(s.gateway.fleet_record()),
        },
    )
}

/// The store and its health now.
pub(super) fn store_status(gateway: &crate::gateway::Gateway) -> StoreStatus {
    let health = gateway.store().health();
    StoreStatus {
        kind: gateway.store().kind().to_string(),
        degraded: health.degraded,
        since: health
            .since
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        last_error: health.last_error,
        invalidation: health.invalidation.map(str::to_owned),
    }
}

/// `POST /v1/explain`: the version a described request would reach and the reason, from the
/// running policy with real store lookups, without sending anything to an upstream.
async fn explain(
    State(s): Shared,
    JsonBody(req): JsonBody<Explain>,
) -> Result<Json<Explanation>, ApiError> {
    if req.client_ip.is_some() && req.peer.is_some() {
        return Err(ApiError::invalid(
            "peer",
            "give `client_ip` (used as it is) or `peer` (resolved with the trusted proxies), not both",
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let field = format!("headers.{name}");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::invalid(&field, "not a valid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| ApiError::invalid(&field, "not a valid header value"))?;
        headers.append(name, value);
    }
    if !req.cookies.is_empty() {
        let cookie: Vec<String> = req
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let value = HeaderValue::from_str(&cookie.join("; "))
            .map_err(|_| ApiError::invalid("cookies", "not valid in a Cookie header"))?;
        headers.append(header::COOKIE, value);
    }
    let client_ip = match (req.client_ip, req.peer) {
        (Some(ip), _) => ip,
        (None, Some(peer)) => s.client_ip.resolve(peer, &headers),
        (None, None) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let raw_path = req.path.as_deref().unwrap_or("/");
    let (path, query) = match (raw_path.split_once('?'), req.query.as_deref()) {
        (Some((p, q)), None) => (p, Some(q)),
        (_, q) => (raw_path.split('?').next().unwrap_or("/"), q),
    };
    if !path.starts_with('/') {
        return Err(ApiError::invalid(
            "path",
            format!("`{path}` must start with `/`"),
        ));
    }
    let host = req.host.as_deref().unwrap_or("");
    let random = req.random.unwrap_or_else(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    // As the data plane: a peer given (no client IP) with original-mode headers looks lists up
    // by the header's text.
    let client_key = match (req.client_ip, req.peer) {
        (None, Some(peer)) => s.client_ip.lookup_key(peer, &headers),
        _ => None,
    };
    let facts = RequestFacts {
        host,
        path,
        query,
        client_ip,
        client_key,
        headers: &headers,
        random,
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        https: req.https,
        // As the data plane: believed from a trusted proxy only (a request described without a
        // peer is taken as it is).
        followed: req
            .followed
            .as_deref()
            .filter(|_| req.peer.is_none_or(|peer| s.client_ip.is_trusted(peer))),
    };
    let policy = s.gateway.policy();
    let revision = s.gateway.revision();
    let method = req.method.unwrap_or_else(|| "GET".to_string());
    let Some(d) = s.gateway.decide(&policy, &facts).await else {
        return Ok(Json(Explanation {
            revision: Revision(revision),
            method,
            client_ip,
            route: None,
            version: None,
            reason: format!(
                "no route serves host `{host}` and path `{path}`: the request gets 404"
            ),
            routed: None,
        }));
    };
    let rule = match &d.reason {
        Reason::Rule { name } => Some(name.to_string()),
        _ => None,
    };
    // As the data plane decides: a version with no server in service sends to stable.
    let fallback = s.upstreams.get().and_then(|upstreams| {
        let table = upstreams.load();
        if d.upstream == d.stable_upstream || table.in_service(d.upstream) {
            return None;
        }
        Some(Fallback {
            version: d.stable_version().to_string(),
            reason: out_of_service(&table, d.upstream),
        })
    });
    let mirror = DataPlane::mirror(&*s.gateway, &d).map(|target| {
        let random = req.mirror_random.unwrap_or_else(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        explain_mirror(&target, &method, random)
    });
    Ok(Json(Explanation {
        revision: Revision(revision),
        method,
        client_ip,
        route: Some(d.route().to_string()),
        version: Some(d.version().to_string()),
        reason: d.reason.to_string(),
        routed: Some(Routed {
            service: d.service().to_string(),
            stable: d.stable_version().to_string(),
            upstream: s.gateway.upstream_names().get(d.upstream).cloned(),
            rule,
            fallback,
            note: d.note.map(|n| n.label().to_string()),
            set_cookie: d.set_cookie.clone(),
            mirror,
        }),
    }))
}

/// Whether the data plane would copy a request of `method` to the mirror of the decided
/// service, with the mirror's number `random`.
fn explain_mirror(target: &MirrorTarget, method: &str, random: u64) -> MirrorExplained {
    let m = &target.mirror;
    let drawn = random % u64::from(crate::policy::BUCKETS);
    let share = format!(
        "{}%",
        f64::from(m.buckets) / (f64::from(crate::policy::BUCKETS) / 100.0)
    );
    let copied_method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map(|method| m.copies(&method))
        .unwrap_or(false);
    // The method first: it decides whatever the draw.
    let (mirrored, reason) = if !copied_method {
        (false, format!("method {method} is not copied"))
    } else if !m.draws(random) {
        (
            false,
            format!(
                "drawn {drawn} of {}, not under {} ({share})",
                crate::policy::BUCKETS,
                m.buckets
            ),
        )
    } else {
        (
            true,
            format!(
                "drawn {drawn} of {}, under {} ({share}); copies in flight {} of {}",
                crate::policy::BUCKETS,
                m.buckets,
                target.in_flight(),
                m.max_in_flight
            ),
        )
    };
    MirrorExplained {
        version: m.version.to_string(),
        mirrored,
        reason,
    }
}

/// The health of upstream `name`'s servers; `None` when the table has no such upstream.
pub(super) fn version_health(table: &Upstreams, name: &str) -> Option<VersionHealth> {
    let index = table.index_of(name)?;
    let servers: Vec<ServerStatus> = table.health(index);
    let in_service = servers
        .iter()
        .filter(|s| s.state == ServerState::Up)
        .count();
    let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    Some(VersionHealth {
        upstream: name.to_string(),
        checked: table.checked_actively(index),
        in_service,
        servers: servers
            .into_iter()
            .map(|s| ServerHealth {
                server: s.addr,
                state: match s.state {
                    ServerState::Up => ServerHealthState::Up,
                    ServerState::Down => ServerHealthState::Down,
                    ServerState::Ejected => ServerHealthState::Ejected,
                    ServerState::Drained => ServerHealthState::Drained,
                },
                reason: s.reason,
                since: s.since.map(time),
                until: s.until.map(time),
            })
            .collect(),
    })
}

/// Why upstream `index` takes no request: `no server of upstream `canary` is in service
/// (127.0.0.1:9001 down: <reason>)`.
fn out_of_service(table: &Upstreams, index: usize) -> String {
    let name = table.name(index).unwrap_or_default();
    let why: Vec<String> = table
        .health(index)
        .into_iter()
        .filter(|s| s.state == ServerState::Down || s.state == ServerState::Ejected)
        .map(|s| match s.reason {
            Some(reason) => format!("{} {}: {reason}", s.addr, s.state.as_str()),
            None => format!("{} {}", s.addr, s.state.as_str()),
        })
        .collect();
    if why.is_empty() {
        format!("no server of upstream `{name}` is in service")
    } else {
        format!(
            "no server of upstream `{name}` is in service ({})",
            why.join("; ")
        )
    }
}
