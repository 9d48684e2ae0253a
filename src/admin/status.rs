//! Health, readiness, status and explain: what the gateway is doing, and what it would do.

use super::error::ApiError;
use super::extract::{etag, JsonBody};
use super::AdminState;
use crate::policy::{Reason, RequestFacts};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

type Shared = State<Arc<AdminState>>;

/// `GET /healthz`: 200 while the process runs.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once a policy is loaded (the admin listener starts after the traffic
/// listeners are bound, so they are up when this answers); 503 before.
pub async fn readyz(State(s): Shared) -> Response {
    match s.gateway.last_reload() {
        Some(_) => {
            Json(json!({ "status": "ready", "revision": s.gateway.revision() })).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not ready",
                "reason": "no policy is loaded: the store holds none and the config names none",
            })),
        )
            .into_response(),
    }
}

/// `GET /v1/status`.
pub async fn status(State(s): Shared) -> Response {
    let policy = s.gateway.policy();
    let revision = s.gateway.revision();
    let health = s.gateway.store().health();
    let (counts, rates) = s.traffic();
    let services: Vec<Value> = policy
        .doc()
        .services
        .iter()
        .map(|svc| {
            let traffic: BTreeMap<&String, Value> = svc
                .versions
                .keys()
                .map(|v| {
                    let requests = counts
                        .get(&svc.name)
                        .and_then(|c| c.get(v))
                        .copied()
                        .unwrap_or(0);
                    let rate = rates.get(&svc.name).and_then(|r| r.get(v)).copied();
                    (v, json!({ "requests": requests, "per_second": rate }))
                })
                .collect();
            let rules: Vec<Value> = svc
                .rules
                .iter()
                .map(|r| json!({ "name": r.name, "version": r.version }))
                .collect();
            json!({
                "name": svc.name,
                "stable": svc.stable,
                "rollback_to": svc.previous_stable,
                "versions": svc.versions,
                "split": svc.split,
                "rules": rules,
                "traffic": traffic,
            })
        })
        .collect();
    let body = json!({
        "revision": revision,
        "last_reload": s.gateway.last_reload().map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "store": {
            "kind": s.gateway.store().kind(),
            "degraded": health.degraded,
            "since": health.since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "last_error": health.last_error,
        },
        "services": services,
    });
    ([(header::ETAG, etag(revision))], Json(body)).into_response()
}

/// A request described for `explain`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// Shown back; the policy does not route on the method.
    #[serde(default)]
    method: Option<String>,
    /// `Host` header; default none (only routes without hosts match).
    #[serde(default)]
    host: Option<String>,
    /// Path, with or without `?query`; default `/`.
    #[serde(default)]
    path: Option<String>,
    /// Query string without `?`.
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    cookies: BTreeMap<String, String>,
    /// The client IP, used as it is.
    #[serde(default)]
    client_ip: Option<IpAddr>,
    /// Instead of `client_ip`: the address the connection comes from; the client IP is then
    /// resolved from it and the forwarding headers with the config's trusted proxies, as the
    /// data plane does.
    #[serde(default)]
    peer: Option<IpAddr>,
    /// The random number (0..) a split without identity would draw; default a random one.
    #[serde(default)]
    random: Option<u64>,
}

/// `POST /v1/explain`: the version a described request would reach and the reason, from the
/// running policy with real store lookups, without sending anything to an upstream.
pub async fn explain(
    State(s): Shared,
    JsonBody(req): JsonBody<ExplainRequest>,
) -> Result<Json<Value>, ApiError> {
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
    let facts = RequestFacts {
        host,
        path,
        query,
        client_ip,
        headers: &headers,
        random,
    };
    let policy = s.gateway.policy();
    let revision = s.gateway.revision();
    let method = req.method.as_deref().unwrap_or("GET");
    let Some(d) = s.gateway.decide(&policy, &facts).await else {
        return Ok(Json(json!({
            "revision": revision,
            "method": method,
            "client_ip": client_ip.to_string(),
            "route": null,
            "version": null,
            "reason": format!("no route serves host `{host}` and path `{path}`: the request gets 404"),
        })));
    };
    let rule = match &d.reason {
        Reason::Rule { name } => Some(name.to_string()),
        _ => None,
    };
    let upstream = s.gateway.upstream_names().get(d.upstream).cloned();
    Ok(Json(json!({
        "revision": revision,
        "method": method,
        "client_ip": client_ip.to_string(),
        "route": &*d.route,
        "service": &*d.service,
        "version": &*d.version,
        "stable": &*d.stable_version,
        "upstream": upstream,
        "reason": d.reason.to_string(),
        "rule": rule,
    })))
}
