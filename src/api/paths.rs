//! Every endpoint's path, in one place: the route patterns the admin routers are built from, and
//! the functions `graygate ctl` builds request paths with (each segment percent-encoded, so a
//! service named `a b/c` is one segment). A pattern and its builder sit side by side, so the two
//! sides cannot drift apart.
//!
//! Query parameters are typed too ([`RuleQuery`], [`HistoryQuery`], [`ReloadQuery`]): the admin
//! reads them with axum's `Query`, ctl writes them with [`rules_at`], [`history`] and [`reload`].

use serde::{Deserialize, Deserializer, Serialize};

/// `GET`: 200 while the process runs (no token).
pub const HEALTHZ: &str = "/healthz";
/// `GET`: 200 once a policy is loaded (no token).
pub const READYZ: &str = "/readyz";
/// `GET`: revision, store health, services and their traffic.
pub const STATUS: &str = "/v1/status";
/// `POST`: which version a described request would reach.
pub const EXPLAIN: &str = "/v1/explain";
/// `GET`, `PUT`: the whole policy document.
pub const POLICY: &str = "/v1/policy";
/// `GET`, `POST`: routes.
pub const ROUTES: &str = "/v1/routes";
/// `GET`, `PUT`, `DELETE`: one route.
pub const ROUTE: &str = "/v1/routes/{name}";
/// `GET`, `POST`: services.
pub const SERVICES: &str = "/v1/services";
/// `GET`, `PUT`, `DELETE`: one service.
pub const SERVICE: &str = "/v1/services/{name}";
/// `GET`, `POST`: versions of a service.
pub const VERSIONS: &str = "/v1/services/{name}/versions";
/// `GET`, `PUT`, `DELETE`: one version.
pub const VERSION: &str = "/v1/services/{name}/versions/{version}";
/// `GET`, `POST`: rules of a service, in order.
pub const RULES: &str = "/v1/services/{name}/rules";
/// `GET`, `PUT`, `DELETE`: one rule.
pub const RULE: &str = "/v1/services/{name}/rules/{rule}";
/// `GET`, `PUT`: the weighted split.
pub const WEIGHTS: &str = "/v1/services/{name}/weights";
/// `POST`: the canary becomes stable.
pub const PROMOTE: &str = "/v1/services/{name}/promote";
/// `GET`: a service's mirror now: copies in flight and the last mismatches of its comparison.
pub const MIRROR: &str = "/v1/services/{name}/mirror";
/// `POST`: everyone back to stable.
pub const ROLLBACK: &str = "/v1/services/{name}/rollback";
/// `GET`: a service's rollout; `POST`: start one.
pub const ROLLOUT: &str = "/v1/services/{name}/rollout";
/// `POST`: `pause`, `resume`, `promote`, `abort` or `retry` the service's rollout.
pub const ROLLOUT_ACTION: &str = "/v1/services/{name}/rollout/{action}";
/// `GET`, `POST`, `DELETE`: gray list entries.
pub const LIST_ENTRIES: &str = "/v1/lists/{list}/entries";
/// `GET`: how many entries a list holds.
pub const LIST_COUNT: &str = "/v1/lists/{list}/count";
/// `GET`: every change, newest first.
pub const HISTORY: &str = "/v1/history";
/// One change with its documents.
pub const HISTORY_ONE: &str = "/v1/history/{revision}";
/// `POST`: back to the policy of a revision.
pub const UNDO: &str = "/v1/undo";
/// `POST`: read the config file again, as SIGHUP does.
pub const RELOAD: &str = "/v1/reload";
/// `GET`: who is signed in; `POST`: sign in (a session cookie); `DELETE`: sign out.
pub const SESSION: &str = "/v1/session";
/// `GET`: a server-sent event with a [`LiveSample`](super::LiveSample) every second.
pub const LIVE: &str = "/v1/live";
/// `GET`: the last minutes of live samples.
pub const LIVE_HISTORY: &str = "/v1/live/history";
/// `GET`: the upstreams this instance runs (config file and shared policy).
pub const UPSTREAMS: &str = "/v1/upstreams";
/// `GET`: one upstream as run; `PUT`: define or replace it in the policy; `DELETE`: delete it.
pub const UPSTREAM: &str = "/v1/upstreams/{name}";
/// `POST`: add a server to a policy upstream.
pub const UPSTREAM_SERVERS: &str = "/v1/upstreams/{name}/servers";
/// `PATCH`: a server's weight or drained; `DELETE`: remove it. `{server}` is its `host:port`.
pub const UPSTREAM_SERVER: &str = "/v1/upstreams/{name}/servers/{server}";
/// The dashboard's page; its files are under it.
pub const UI: &str = "/ui/";
/// `GET`: every live instance sharing the store ([`Fleet`](super::Fleet)).
pub const FLEET: &str = "/v1/fleet";
/// `POST`: write this instance's policy back into a store that lost it (behind).
pub const FLEET_RESTORE: &str = "/v1/fleet/restore";
/// The header of a change's answer that says how many live instances applied its revision
/// ([`AppliedBy`](super::AppliedBy), as JSON).
pub const APPLIED_HEADER: &str = "x-graygate-applied";
/// The query parameter of any change: wait until every live instance applied it, at most this
/// long (`"10s"`; at most [`MAX_WAIT`]).
pub const WAIT_PARAM: &str = "wait";
/// The longest wait a change may ask for.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `pattern` with each `{...}` replaced, in order, by the next of `segments`, percent-encoded.
fn fill(pattern: &str, segments: &[&str]) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut segments = segments.iter();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        if let Some(segment) = segments.next() {
            encode_segment(segment, &mut out);
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn encode_segment(segment: &str, out: &mut String) {
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// [`UPSTREAM`].
pub fn upstream(name: &str) -> String {
    fill(UPSTREAM, &[name])
}

/// [`UPSTREAM_SERVERS`].
pub fn upstream_servers(name: &str) -> String {
    fill(UPSTREAM_SERVERS, &[name])
}

/// [`UPSTREAM_SERVER`].
pub fn upstream_server(name: &str, server: &str) -> String {
    fill(UPSTREAM_SERVER, &[name, server])
}

/// [`ROUTE`].
pub fn route(name: &str) -> String {
    fill(ROUTE, &[name])
}

/// [`SERVICE`].
pub fn service(name: &str) -> String {
    fill(SERVICE, &[name])
}

/// [`VERSIONS`].
pub fn versions(service: &str) -> String {
    fill(VERSIONS, &[service])
}

/// [`VERSION`].
pub fn version(service: &str, version: &str) -> String {
    fill(VERSION, &[service, version])
}

/// [`RULES`].
pub fn rules(service: &str) -> String {
    fill(RULES, &[service])
}

/// [`RULES`] with its query: where a new rule goes.
pub fn rules_at(service: &str, query: &RuleQuery) -> String {
    let mut path = rules(service);
    if let Some(position) = query.position {
        path.push_str(&format!("?position={position}"));
    }
    path
}

/// [`RULE`].
pub fn rule(service: &str, rule: &str) -> String {
    fill(RULE, &[service, rule])
}

/// [`WEIGHTS`].
pub fn weights(service: &str) -> String {
    fill(WEIGHTS, &[service])
}

/// [`ROLLOUT`].
pub fn rollout(service: &str) -> String {
    fill(ROLLOUT, &[service])
}

/// [`ROLLOUT_ACTION`]: `action` is `pause`, `resume`, `promote`, `abort` or `retry`.
pub fn rollout_action(service: &str, action: &str) -> String {
    fill(ROLLOUT_ACTION, &[service, action])
}

/// [`PROMOTE`].
pub fn promote(service: &str) -> String {
    fill(PROMOTE, &[service])
}

/// [`MIRROR`].
pub fn mirror(service: &str) -> String {
    fill(MIRROR, &[service])
}

/// [`ROLLBACK`].
pub fn rollback(service: &str) -> String {
    fill(ROLLBACK, &[service])
}

/// [`LIST_ENTRIES`].
pub fn list_entries(list: &str) -> String {
    fill(LIST_ENTRIES, &[list])
}

/// [`LIST_COUNT`].
pub fn list_count(list: &str) -> String {
    fill(LIST_COUNT, &[list])
}

/// [`HISTORY`] with its query.
pub fn history(query: &HistoryQuery) -> String {
    let mut params = Vec::new();
    if let Some(limit) = query.limit {
        params.push(format!("limit={limit}"));
    }
    if let Some(before) = query.before {
        params.push(format!("before={before}"));
    }
    if params.is_empty() {
        HISTORY.to_string()
    } else {
        format!("{HISTORY}?{}", params.join("&"))
    }
}

/// [`HISTORY_ONE`].
pub fn history_one(revision: u64) -> String {
    fill(HISTORY_ONE, &[&revision.to_string()])
}

/// [`RELOAD`] with its query.
pub fn reload(query: &ReloadQuery) -> String {
    if query.force {
        format!("{RELOAD}?force=true")
    } else {
        RELOAD.to_string()
    }
}

/// The query of `POST /v1/reload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadQuery {
    /// Apply the config's policy even if it did not change since it was last applied, and even
    /// over a rollout in progress.
    #[serde(default, deserialize_with = "true_or_false")]
    pub force: bool,
}

/// The query of `POST /v1/services/{name}/rules`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleQuery {
    /// Where the new rule goes (0 is first); absent: last.
    #[serde(default, deserialize_with = "whole_number")]
    pub position: Option<usize>,
}

/// The query of `GET /v1/history`: one page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// How many changes, newest first; absent: [`HistoryQuery::DEFAULT_LIMIT`], at most
    /// [`HistoryQuery::MAX_LIMIT`] (more is refused, not cut: a client that asked for 1000 and
    /// got 100 would think it has them all).
    #[serde(default, deserialize_with = "whole_number")]
    pub limit: Option<usize>,
    /// Only changes older than this revision: the cursor of the next page (the `next` of the
    /// page before names it). Absent: from the newest.
    #[serde(default, deserialize_with = "whole_number_u64")]
    pub before: Option<u64>,
}

impl HistoryQuery {
    /// Changes shown when the query names no limit.
    pub const DEFAULT_LIMIT: usize = 20;
    /// The largest page: a page is read whole in memory, and its records may be big.
    pub const MAX_LIMIT: usize = 100;
}

/// The query of `GET /v1/lists/{list}/entries`: a search (the dashboard's). Without either,
/// every entry is answered, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryQuery {
    /// Only entries whose key contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// At most this many entries, by key; absent with `q`: [`EntryQuery::DEFAULT_LIMIT`]; at
    /// most [`EntryQuery::MAX_LIMIT`].
    #[serde(default, deserialize_with = "whole_number")]
    pub limit: Option<usize>,
}

impl EntryQuery {
    /// Entries answered to a search that names no limit.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The most one search answers.
    pub const MAX_LIMIT: usize = 1000;
}

/// A query parameter that must be a whole number, refused with a message that shows the value
/// (the caller names the parameter).
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<usize, E> {
            v.parse()
                .map_err(|_| E::custom(format!("`{v}` is not a whole number")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("`{v}` is too large")))
        }
    }
    deserializer.deserialize_str(Visitor).map(Some)
}

/// [`whole_number`] for a revision.
fn whole_number_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    whole_number(deserializer).map(|n| n.map(|n| n as u64))
}

/// A query parameter that must be `true` or `false`.
fn true_or_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is not true or false"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(service("web"), "/v1/services/web");
        assert_eq!(service("a b/c"), "/v1/services/a%20b%2Fc");
        assert_eq!(version("web", "v1.2~x"), "/v1/services/web/versions/v1.2~x");
        assert_eq!(rule("web", "é"), "/v1/services/web/rules/%C3%A9");
        assert_eq!(list_entries("gray_ips"), "/v1/lists/gray_ips/entries");
    }

    #[test]
    fn every_builder_fills_every_placeholder() {
        let built = [
            (ROUTE, route("x")),
            (SERVICE, service("x")),
            (VERSIONS, versions("x")),
            (VERSION, version("x", "y")),
            (RULES, rules("x")),
            (RULE, rule("x", "y")),
            (WEIGHTS, weights("x")),
            (PROMOTE, promote("x")),
            (MIRROR, mirror("x")),
            (ROLLBACK, rollback("x")),
            (LIST_ENTRIES, list_entries("x")),
            (LIST_COUNT, list_count("x")),
        ];
        for (pattern, path) in built {
            assert!(!path.contains('{'), "{pattern} -> {path}");
            // The same shape: every `{...}` became one segment.
            let p: Vec<&str> = pattern.split('/').collect();
            let b: Vec<&str> = path.split('/').collect();
            assert_eq!(p.len(), b.len(), "{pattern} -> {path}");
            for (p, b) in p.iter().zip(&b) {
                assert!(p.starts_with('{') || p == b, "{pattern} -> {path}");
            }
        }
    }

    /// What the admin reads back with axum's `Query` from what ctl wrote.
    fn read<T: serde::de::DeserializeOwned>(path: &str) -> Result<T, String> {
        let uri: http::Uri = path.parse().unwrap();
        axum::extract::Query::<T>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn queries_round_trip() {
        for q in [
            HistoryQuery {
                limit: Some(7),
                before: None,
            },
            HistoryQuery {
                limit: None,
                before: None,
            },
            HistoryQuery {
                limit: Some(100),
                before: Some(42),
            },
            HistoryQuery {
                limit: None,
                before: Some(1),
            },
        ] {
            assert_eq!(read::<HistoryQuery>(&history(&q)), Ok(q));
        }
        for q in [
            RuleQuery { position: Some(0) },
            RuleQuery { position: None },
        ] {
            assert_eq!(read::<RuleQuery>(&rules_at("web", &q)), Ok(q));
        }
        for q in [ReloadQuery { force: true }, ReloadQuery { force: false }] {
            assert_eq!(read::<ReloadQuery>(&reload(&q)), Ok(q));
        }
        let e = read::<ReloadQuery>("/v1/reload?force=yes").unwrap_err();
        assert!(e.ends_with("force: `yes` is not true or false"), "{e}");
    }

    #[test]
    fn a_query_value_that_is_not_a_number_is_named() {
        let e = read::<HistoryQuery>("/v1/history?limit=ten").unwrap_err();
        assert!(e.ends_with("limit: `ten` is not a whole number"), "{e}");
        let e = read::<RuleQuery>("/v1/services/web/rules?position=-1").unwrap_err();
        assert!(e.ends_with("position: `-1` is not a whole number"), "{e}");
        let e = read::<HistoryQuery>("/v1/history?limit=").unwrap_err();
        assert!(e.ends_with("limit: `` is not a whole number"), "{e}");
        // Other parameters are ignored, as before.
        assert_eq!(
            read::<HistoryQuery>("/v1/history?x=1&limit=3"),
            Ok(HistoryQuery {
                limit: Some(3),
                before: None
            })
        );
        let e = read::<HistoryQuery>("/v1/history?before=x7").unwrap_err();
        assert!(e.ends_with("before: `x7` is not a whole number"), "{e}");
        assert_eq!(history_one(12), "/v1/history/12");
    }
}
