//! What the gateway is doing and what it would do: health, readiness, status, explain.

use super::Revision;
use crate::policy::model::SplitDoc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `GET /healthz`: `{"status": "ok"}` while the process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// `GET /readyz`: `ready` with the running revision, or `not ready` with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/status` (with the running revision beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When the running policy was installed, RFC 3339 UTC with milliseconds.
    pub last_reload: Option<String>,
    pub store: StoreStatus,
    pub services: Vec<ServiceStatus>,
    /// This instance as the fleet view shows it: where its policy came from (the store, its
    /// snapshot while the store was down), divergence, the store as it sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<super::FleetInstance>,
}

/// The store and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `embedded`, `redis` or `memcached`.
    pub kind: String,
    /// True while the store cannot be reached (requests are decided as if it were empty).
    pub degraded: bool,
    /// Since when it is degraded, RFC 3339 UTC.
    pub since: Option<String>,
    pub last_error: Option<String>,
    /// How values written by other clients reach this instance's lookup cache (Redis:
    /// `tracking`, `keyspace-events`, `ttl-only` — stale for up to the cache TTL — or
    /// `disconnected`); absent for other stores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidation: Option<String>,
}

/// One service as it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub stable: String,
    /// Where a rollback sends everyone back (the stable version before the last promote).
    pub rollback_to: Option<String>,
    /// Version name -> upstream.
    pub versions: BTreeMap<String, String>,
    pub split: Option<SplitDoc>,
    /// The rules, in the order they are tried.
    pub rules: Vec<RuleSummary>,
    /// Per version: requests this instance routed there.
    pub traffic: BTreeMap<String, Traffic>,
    /// Per version: the health of its upstream's servers (absent when the admin API does not
    /// see the data plane).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<String, VersionHealth>,
}

/// The health of the servers that serve one version (its upstream's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionHealth {
    /// The upstream that serves the version.
    pub upstream: String,
    /// True when the upstream has active health checks (`health` in the config); without them
    /// only passive ejection takes a server out of service.
    pub checked: bool,
    /// Servers in service now. At 0, the version's requests go to the service's stable version
    /// (and the stable version's own go to its servers anyway, as a last resort).
    pub in_service: usize,
    /// Every server, in the config's order.
    pub servers: Vec<ServerHealth>,
}

/// One server as the health checks and passive ejection see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    /// `host:port`.
    pub server: String,
    pub state: ServerHealthState,
    /// Why it is out of service: the last failed check, or the failures that ejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when it is out of service, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Until when an ejected server stays out, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// Whether a server takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerHealthState {
    /// In service.
    Up,
    /// Its active health checks fail.
    Down,
    /// Ejected for a while after failed answers in a row.
    Ejected,
    /// Weight 0 in the config: never used.
    Drained,
}

/// A rule in the status: its name and where it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSummary {
    pub name: String,
    pub version: String,
}

/// Requests routed to one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Since this instance started.
    pub requests: u64,
    /// Over the last seconds; `null` until the first sample.
    pub per_second: Option<f64>,
}

/// Body of `POST /v1/explain`: a request described.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explain {
    /// Shown back; the policy does not route on the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `Host` header; default none (only routes without hosts match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path, with or without `?query`; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Query string without `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// The client IP, used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    /// Instead of `client_ip`: the address the connection comes from; the client IP is then
    /// resolved from it and the forwarding headers with the config's trusted proxies, as the
    /// data plane does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<IpAddr>,
    /// The random number (0..) a split without identity would draw; default a random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<u64>,
    /// The request comes over HTTPS (a new bucket cookie is then `Secure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    /// The version an upstream graygate chose (its version header), for a service that
    /// `follow`s; believed when `peer` is a trusted proxy or not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<String>,
    /// The random number (0..) the service's mirror would draw (the data plane draws it apart
    /// from the split's); default a random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_random: Option<u64>,
}

/// `POST /v1/explain`: the version a described request would reach, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The revision of the running policy that decided.
    pub revision: Revision,
    pub method: String,
    pub client_ip: IpAddr,
    /// `null` when no route serves the request (it would get 404).
    pub route: Option<String>,
    /// `null` when no route serves the request.
    pub version: Option<String>,
    /// `rule:<name>`, `split:sticky:<bucket>`, `default`, ...; or why no route serves it.
    pub reason: String,
    /// Present when a route serves the request.
    #[serde(flatten)]
    pub routed: Option<Routed>,
}

/// The rest of a decision, when a route serves the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    pub service: String,
    /// The service's stable version.
    pub stable: String,
    /// The upstream the version is served by.
    pub upstream: Option<String>,
    /// The rule that decided, if a rule did.
    pub rule: Option<String>,
    /// Set when the version's upstream has no server in service: the request would go to the
    /// stable version instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// What routing passed over or handed out on the way: `override_refused:secret`,
    /// `bucket_cookie:new`, ... (the `note` label of `graygate_policy_notes_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The `Set-Cookie` the response would carry (a new bucket cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_cookie: Option<String>,
    /// Set when the service mirrors its traffic: whether this request would be copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorExplained>,
}

/// `GET /v1/services/{name}/mirror`: a service's mirror now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub service: String,
    /// The mirror version.
    pub version: String,
    /// Copies running now, and their cap.
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Whether the answers are compared.
    pub compare: bool,
    /// The last mismatches of the comparison (at most 20, on this instance), oldest first.
    pub mismatches: Vec<MirrorMismatch>,
}

/// One answer of the mirror that differed from the primary's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorMismatch {
    /// When, RFC 3339.
    pub at: String,
    /// The request's path (without its query).
    pub path: String,
    pub primary_status: u16,
    pub mirror_status: u16,
    /// Both bodies hashed the same: only the statuses differ.
    pub same_body: bool,
}

/// Whether a request would be copied to its service's mirror, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorExplained {
    /// The mirror version.
    pub version: String,
    /// True when a copy would be sent (limits permitting: in flight, body size).
    pub mirrored: bool,
    /// `drawn 312 of 10000, under 1000 (10%)`, `method POST is not copied`, ...
    pub reason: String,
}

/// Who would answer instead of the chosen version, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// The version that would answer: the service's stable version.
    pub version: String,
    /// Why the chosen version would not: `no server of upstream canary is in service
    /// (127.0.0.1:9001 down: ...)`.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Revisioned;
    use serde_json::json;

    fn same<T>(value: serde_json::Value) -> T
    where
        T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let typed: T = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{value} does not read: {e}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), value, "{typed:?}");
        typed
    }

    #[test]
    fn status_keeps_its_json() {
        same::<Revisioned<Status>>(
            json!({"revision": 7, "last_reload": "2026-11-23T12:22:26.245Z",
            "store": {"kind": "redis", "degraded": false, "since": null, "last_error": null},
            "services": [{"name": "web", "stable": "stable", "rollback_to": null,
                "versions": {"canary": "canary", "stable": "stable"},
                "split": {"weights": {"canary": 10.0}, "by": {"header": "X-User-Id"}},
                "rules": [{"name": "gray-ips", "version": "canary"}],
                "traffic": {"canary": {"requests": 1042, "per_second": 12.3},
                            "stable": {"requests": 9378, "per_second": null}}}]}),
        );
        let with_health: Revisioned<Status> = same(json!({"revision": 7, "last_reload": null,
            "store": {"kind": "embedded", "degraded": false, "since": null, "last_error": null},
            "services": [{"name": "web", "stable": "stable", "rollback_to": null,
                "versions": {"canary": "canary", "stable": "stable"}, "split": null, "rules": [],
                "traffic": {},
                "health": {"canary": {"upstream": "canary", "checked": true, "in_service": 0,
                    "servers": [{"server": "127.0.0.1:9001", "state": "down",
                        "reason": "3 health checks failed in a row: GET /healthz: answered 503",
                        "since": "2026-11-23T12:22:26Z"}]},
                    "stable": {"upstream": "stable", "checked": false, "in_service": 1,
                    "servers": [{"server": "127.0.0.1:9000", "state": "up"}]}}}]}));
        assert_eq!(
            with_health.body.services[0].health["canary"].servers[0].state,
            ServerHealthState::Down
        );
        same::<Readiness>(json!({"status": "ready", "revision": 7}));
        same::<Readiness>(json!({"status": "not ready", "reason": "no policy"}));
        same::<Health>(json!({"status": "ok"}));
    }

    #[test]
    fn explanations_keep_their_json_with_and_without_a_route() {
        let routed: Explanation = same(json!({"revision": 7, "method": "GET",
            "client_ip": "10.0.0.7", "route": "web", "service": "web", "version": "canary",
            "stable": "stable", "upstream": "canary", "reason": "rule:gray-ips", "rule": "gray-ips"}));
        assert_eq!(routed.routed.unwrap().rule.as_deref(), Some("gray-ips"));
        let down: Explanation = same(json!({"revision": 7, "method": "GET",
            "client_ip": "10.0.0.7", "route": "web", "service": "web", "version": "canary",
            "stable": "stable", "upstream": "canary", "reason": "rule:gray-ips", "rule": "gray-ips",
            "fallback": {"version": "stable", "reason": "no server of upstream `canary` is in service"}}));
        assert_eq!(down.routed.unwrap().fallback.unwrap().version, "stable");
        let lost: Explanation = same(json!({"revision": 7, "method": "GET",
            "client_ip": "127.0.0.1", "route": null, "version": null,
            "reason": "no route serves host `` and path `/`: the request gets 404"}));
        assert_eq!(lost.routed, None);
    }

    #[test]
    fn explain_requests_send_only_what_is_given() {
        let e = Explain {
            method: Some("GET".into()),
            path: Some("/".into()),
            client_ip: Some("10.0.0.8".parse().unwrap()),
            ..Explain::default()
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"method": "GET", "path": "/", "headers": {}, "cookies": {}, "client_ip": "10.0.0.8"})
        );
        let e = serde_json::from_value::<Explain>(json!({"client_ip": "300.1.1.1"})).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid IP address syntax"),
            "{e}"
        );
    }
}
