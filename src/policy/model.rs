//! The policy as operators write it: plain serde types, read from TOML (config files) and JSON (the
//! store, the admin API). Nothing here is checked beyond its shape; `compile` turns a [`PolicyDoc`]
//! into the lookup structures the request path uses and rejects what does not make sense.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole routing policy: which requests belong to which service, and which version of that
/// service answers them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// Routes, tried most specific first (exact host before any host, longer path prefix first).
    #[serde(default)]
    pub routes: Vec<RouteDoc>,
    /// Services by name; each route names one.
    #[serde(default)]
    pub services: Vec<ServiceDoc>,
    /// Upstreams shared by every instance (see [`super::upstreams`]): each replaces the config
    /// file's upstream of the same name. Left out when empty, so that documents without them
    /// read and write as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, super::upstreams::UpstreamDoc>,
}

/// Sends requests for some hosts and/or a path prefix to a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDoc {
    /// Shown in logs and metrics; defaults to the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host names this route answers (`Host` header, port ignored, case-insensitive). A leading
    /// `*.` matches any subdomain. Empty: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefix this route answers, matched on `/` boundaries (`/api` matches `/api` and
    /// `/api/x`, not `/apix`). Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The service that answers.
    pub service: String,
}

/// A service with one stable version and one or more other named versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    pub name: String,
    /// The version that answers when nothing else decides (production).
    pub stable: String,
    /// Version name -> upstream name (an upstream of the policy's `upstreams` or of the config
    /// file).
    pub versions: BTreeMap<String, String>,
    /// A tester override: a header or cookie whose value `always` sends the request to the
    /// override's version and `never` keeps it on stable. Checked before the rules.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<OverrideDoc>,
    /// Honour the version an upstream graygate chose (its version header, `X-Graygate-Version`
    /// by default) when the request comes from a trusted proxy (`client_ip.trusted_proxies`) and
    /// the header names a version of this service: gray that follows a request across services.
    /// Checked before the override and the rules. From any other peer the header is removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// Ordered rules; the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleDoc>,
    /// When no rule matched: a weighted split between versions; the rest goes to stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitDoc>,
    /// The stable version before the last promote: where a rollback sends everyone back. Set by
    /// a promote, used and cleared by a rollback, cleared when a new canary starts (a weight above
    /// zero or a rule is set through the admin API). See `policy::edit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_stable: Option<String>,
    /// The split weight the promoted version had before the last promote (the stable version
    /// takes no weight, so a promote takes it out of the split): a rollback that undoes the
    /// promote puts it back, so that the service is exactly as it was before. Set, used and
    /// cleared together with `previous_stable` (without it, it means nothing); absent when the
    /// promoted version had no weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_weight: Option<f64>,
    /// A rollout carrying a version of this service to 100% (see [`crate::rollout`]): its plan
    /// and where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutDoc>,
    /// Copies of a share of this service's requests to one of its versions (shadow traffic):
    /// see [`super::mirror`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<super::mirror::MirrorDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The version `always` forces.
    pub version: String,
    /// Only clients whose resolved IP is inside one of these networks may use `always`
    /// (`10.0.0.0/8`, `::1`). Empty: any client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// A shared secret: `always` then counts only as `always:<secret>` (compared in constant
    /// time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// An HMAC key for expiring values: `always:<expiry>:<signature>`, made by
    /// `graygate override-token`, counts until its expiry (Unix seconds). With `secret` too,
    /// either form is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One rule: when `when` matches, `version` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    /// Unique within the service; names the rule in decisions, logs and metrics.
    pub name: String,
    pub version: String,
    pub when: Condition,
}

/// A condition: either a combination (`all`, `any`, `not`) or one source plus one test.
///
/// Sources: `header`, `cookie`, `query` (a parameter name), `client_ip = true`. A source may go
/// through a store `lookup` first (the looked-up value is what the test sees). With no source,
/// a `cidr` test reads the client IP.
///
/// Tests: `equals`, `in`, `regex`, `cidr`, `range`, `ids`, `suffix`, `modulo`, `percent`,
/// `present`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Condition>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<LookupDoc>,

    /// The value equals this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The value is one of these strings.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub in_: Option<Vec<String>>,
    /// The value matches this regular expression (unanchored, as `regex` crate syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The value is an IP address inside one of these networks (`10.0.0.0/8`, `::1`, `1.2.3.4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Vec<String>>,
    /// The value is an integer inside this range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeDoc>,
    /// The value is a number inside a range that is itself stored as JSON in a store list (the
    /// original OpenResty design's `Grayscale_Range` key): editing that key moves users at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_from: Option<RangeFromDoc>,
    /// The value is one of these integers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<i64>>,
    /// The value (as decimal text of an integer) ends with one of these digit strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<Vec<String>>,
    /// The integer value modulo `divisor` is one of `remainders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modulo: Option<ModuloDoc>,
    /// A stable hash of the value falls in the first `percent` of 100 buckets (two decimals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Salt for `percent` so that two rules bucket the same identity independently; default the
    /// rule name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// The value is present (true) or absent (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Maps the source value through a store list: the value stored under `key` (with `{}` replaced
/// by the source value; default `{}`) in `list` is what the test sees. Missing -> no value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupDoc {
    pub list: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// An integer range; both ends included unless `exclusive` (the original OpenResty design compares
/// `start < id < end`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeDoc {
    pub start: i64,
    pub end: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
}

/// A range read from a JSON object stored under `key` in `list`, like
/// `{"idStart":1,"idEnd":5000}`; the bounds may be numbers or numeric strings. A missing key or
/// malformed JSON matches nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeFromDoc {
    pub list: String,
    pub key: String,
    /// JSON field of the lower bound; default `idStart`.
    #[serde(default = "default_start_field")]
    pub start: String,
    /// JSON field of the upper bound; default `idEnd`.
    #[serde(default = "default_end_field")]
    pub end: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
}

fn default_start_field() -> String {
    "idStart".into()
}

fn default_end_field() -> String {
    "idEnd".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuloDoc {
    pub divisor: u64,
    pub remainders: Vec<u64>,
}

/// A weighted split of the requests no rule decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitDoc {
    /// Version -> percent (two decimals); what is left of 100 goes to stable.
    pub weights: BTreeMap<String, f64>,
    /// The identity that makes the split sticky (same identity, same version, on every instance
    /// and after a restart). Absent: each request is bucketed at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<IdentityDoc>,
    /// Hash salt; default the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Visitors without the `by` identity (or every visitor, with no `by`) are bucketed by a
    /// random bucket id kept in this cookie, hashed exactly as an identity: the realised split is
    /// the weight, a visitor keeps its version, and a weight change moves only the marginal
    /// buckets. Absent: such requests go to stable (with `by`) or are bucketed per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_cookie: Option<StickyCookieDoc>,
}

/// The bucket cookie of a split: its attributes, and an optional HMAC key that signs the bucket
/// id so that a client cannot choose its bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookieDoc {
    #[serde(default = "default_cookie_name")]
    pub name: String,
    /// `Max-Age`; default one day.
    #[serde(default = "default_cookie_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "default_cookie_path")]
    pub path: String,
    #[serde(default = "yes")]
    pub http_only: bool,
    #[serde(default)]
    pub same_site: SameSite,
    /// `Secure`: default on when the request came over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Signs the bucket id (HMAC-SHA256); a cookie with a bad signature is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Default for StickyCookieDoc {
    fn default() -> Self {
        StickyCookieDoc {
            name: default_cookie_name(),
            max_age: default_cookie_max_age(),
            path: default_cookie_path(),
            http_only: true,
            same_site: SameSite::default(),
            secure: None,
            key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

fn default_cookie_name() -> String {
    "graygate_bucket".into()
}

fn default_cookie_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_cookie_path() -> String {
    "/".into()
}

fn yes() -> bool {
    true
}

/// Where an identity is read from: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<bool>,
}
