//! Requests and answers about the policy: the whole document, routes, services, versions, rules,
//! weights, promote and rollback. The documents themselves are [`crate::policy::model`]'s types;
//! every answer to a change is [`Revisioned`](super::Revisioned), so it carries the revision the
//! change became.

use crate::policy::model::{IdentityDoc, RouteDoc, RuleDoc, ServiceDoc, SplitDoc};
use crate::policy::PolicyDoc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `PUT /v1/policy`: the document now stored and running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyReplaced {
    pub policy: PolicyDoc,
}

/// `GET /v1/routes`: every route, each with the name it is addressed by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteList {
    pub routes: Vec<RouteDoc>,
}

/// `POST /v1/routes`: the route created, with its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteCreated {
    pub route: RouteDoc,
}

/// `PUT /v1/routes/{name}`: the route as stored, and whether it is new.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutePut {
    pub created: bool,
    pub route: RouteDoc,
}

/// `DELETE /v1/routes/{name}`: the route that was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDeleted {
    pub deleted: RouteDoc,
}

/// `GET /v1/services`: every service document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<ServiceDoc>,
}

/// `POST /v1/services`: the service created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCreated {
    pub service: ServiceDoc,
}

/// `PUT /v1/services/{name}`: the service sent, and whether it is new.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePut {
    pub created: bool,
    pub service: ServiceDoc,
}

/// `DELETE /v1/services/{name}`: the service that was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDeleted {
    pub deleted: ServiceDoc,
}

/// `GET /v1/services/{s}/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionList {
    pub service: String,
    pub stable: String,
    /// Version name -> upstream.
    pub versions: BTreeMap<String, String>,
}

/// One version of a service: `GET /v1/services/{s}/versions/{v}`, and (with the revision) the
/// answer to creating one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub service: String,
    pub name: String,
    /// The upstream (of the startup config) that serves it.
    pub upstream: String,
    /// Whether it is the service's stable version.
    pub stable: bool,
}

/// `PUT /v1/services/{s}/versions/{v}`: the version as set, and whether it is new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionPut {
    #[serde(flatten)]
    pub version: Version,
    pub created: bool,
}

/// `DELETE /v1/services/{s}/versions/{v}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDeleted {
    pub service: String,
    /// The version deleted.
    pub deleted: String,
}

/// Body of `POST /v1/services/{s}/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    pub name: String,
    /// The upstream (of the startup config) that serves it.
    pub upstream: String,
}

/// Body of `PUT /v1/services/{s}/versions/{v}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVersion {
    /// The upstream (of the startup config) that serves the version.
    pub upstream: String,
}

/// `GET /v1/services/{s}/rules`: the rules, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleList {
    pub service: String,
    pub rules: Vec<RuleDoc>,
}

/// `POST` or `PUT` of a rule: the rule as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleWritten {
    pub service: String,
    pub rule: RuleDoc,
}

/// `DELETE /v1/services/{s}/rules/{r}`: the rule that was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDeleted {
    pub service: String,
    pub deleted: RuleDoc,
}

/// `GET` and `PUT /v1/services/{s}/weights`: the split as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub service: String,
    pub stable: String,
    /// `null` when the service has no split (everyone not matched by a rule goes to stable).
    pub split: Option<SplitDoc>,
}

/// Body of `PUT /v1/services/{s}/weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetWeights {
    /// Version -> percent; replaces the previous weights.
    pub weights: BTreeMap<String, f64>,
    /// The identity that makes the split sticky; kept from before when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<IdentityDoc>,
    /// Hash salt; kept from before when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

/// Body of `POST /v1/services/{s}/promote` (may be left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// The version to promote; default the canary (the only other version, or the only one
    /// with a weight).
    #[serde(default)]
    pub version: Option<String>,
}

/// `POST /v1/services/{s}/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub service: String,
    /// The stable version now.
    pub stable: String,
    /// The stable version before: the rollback target.
    pub previous_stable: String,
}

/// Body of `POST /v1/services/{s}/rollback` (may be left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Also delete the service's rules (gray lists stop sending anyone to the canary).
    #[serde(default)]
    pub clear_rules: bool,
}

/// `POST /v1/services/{s}/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolledBack {
    pub service: String,
    /// The stable version now.
    pub stable: String,
    /// Set when the rollback undid a promote: the version that was stable until now.
    pub demoted: Option<String>,
    /// Set when the rollback undid a promote of a version that had a split weight: the weight it
    /// has again. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_weight: Option<f64>,
    /// How many rules were deleted.
    pub rules_cleared: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Revisioned;
    use serde_json::json;

    /// `value` is what the admin API has always sent: it reads into `T` and writes back the same.
    fn same<T>(value: serde_json::Value)
    where
        T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let typed: T = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{value} does not read: {e}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), value, "{typed:?}");
    }

    #[test]
    fn answers_keep_their_json() {
        same::<Revisioned<RoutePut>>(json!({"revision": 3, "created": true,
            "route": {"name": "api", "service": "api", "path_prefix": "/api"}}));
        same::<Revisioned<RouteDeleted>>(
            json!({"revision": 3, "deleted": {"name": "web", "service": "web"}}),
        );
        same::<Revisioned<ServiceList>>(json!({"revision": 1, "services": [
            {"name": "web", "stable": "v1", "versions": {"v1": "a"}}]}));
        same::<Revisioned<VersionList>>(json!({"revision": 2, "service": "web",
            "stable": "v1", "versions": {"v1": "a", "v2": "b"}}));
        same::<Version>(json!({"service": "web", "name": "v2", "upstream": "b", "stable": false}));
        same::<Revisioned<Version>>(
            json!({"revision": 5, "service": "web", "name": "v2", "upstream": "b", "stable": false}),
        );
        same::<Revisioned<VersionPut>>(json!({"revision": 5, "service": "web", "name": "v2",
            "upstream": "b", "stable": false, "created": true}));
        same::<Revisioned<VersionDeleted>>(
            json!({"revision": 6, "service": "web", "deleted": "v2"}),
        );
        same::<Revisioned<RuleWritten>>(json!({"revision": 6, "service": "web",
            "rule": {"name": "beta", "version": "v2", "when": {"header": "X-Beta", "present": true}}}));
        same::<Revisioned<Weights>>(json!({"revision": 7, "service": "web", "stable": "v1",
            "split": {"weights": {"v2": 10.0}, "by": {"header": "X-User-Id"}}}));
        same::<Revisioned<Weights>>(
            json!({"revision": 7, "service": "web", "stable": "v1", "split": null}),
        );
        same::<Revisioned<Promoted>>(json!({"revision": 8, "service": "web", "stable": "v2",
            "previous_stable": "v1"}));
        same::<Revisioned<RolledBack>>(json!({"revision": 9, "service": "web", "stable": "v1",
            "demoted": "v2", "rules_cleared": 0}));
        same::<Revisioned<RolledBack>>(json!({"revision": 9, "service": "web", "stable": "v1",
            "demoted": "v2", "restored_weight": 50.0, "rules_cleared": 0}));
        same::<Revisioned<RolledBack>>(json!({"revision": 9, "unchanged": true,
            "service": "web", "stable": "v1", "demoted": null, "rules_cleared": 0}));
        same::<Revisioned<RolledBack>>(json!({"revision": 9, "service": "web", "stable": "v1",
            "demoted": null, "rules_cleared": 2}));
    }

    #[test]
    fn requests_write_only_what_is_given() {
        let body = SetWeights {
            weights: BTreeMap::from([("canary".to_string(), 10.0)]),
            by: None,
            salt: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"weights": {"canary": 10.0}})
        );
        same::<SetWeights>(
            json!({"weights": {"canary": 10.0}, "by": {"cookie": "uid"}, "salt": "s"}),
        );
        same::<NewVersion>(json!({"name": "v3", "upstream": "next"}));
        same::<SetVersion>(json!({"upstream": "next"}));
        same::<Promote>(json!({"version": "canary"}));
        same::<Rollback>(json!({"clear_rules": true}));
        let e = serde_json::from_value::<SetVersion>(json!({"upstream": "a", "x": 1})).unwrap_err();
        assert!(e.to_string().starts_with("unknown field `x`"), "{e}");
    }
}
