//! Traffic mirroring (shadow traffic) as the policy describes it: a service may send a copy of a
//! share of its requests to one of its versions, whose answer is thrown away (and, optionally,
//! compared with the primary's).
//!
//! It lives in the service's policy document (`mirror = { .. }`), so that an operator turns it
//! on, changes it and turns it off at runtime through the admin API and the store, like every
//! other routing setting. This module holds the serde shape ([`MirrorDoc`]), its validation with
//! errors naming the field, and the compiled form the data plane reads ([`Mirror`]). Like the rest
//! of the policy core it is pure: the data plane draws the random number, counts what is in
//! flight and sends the copies (`crate::proxy::mirror`).

use super::model::ServiceDoc;
use super::path::FieldPath;
use super::{buckets_of_percent, CompileError, PolicyDoc, BUCKETS};
use http::Method;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Largest `max_body`: the mirror holds a copy of each mirrored body in memory, up to
/// `max_in_flight` of them at once.
pub const MAX_BODY_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT_LIMIT: usize = 100_000;
/// Longest `timeout`: a mirror is a side show; one that takes longer is not worth waiting for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `mirror = { version = "canary", percent = 10, .. }` in a service: copies of a share of the
/// service's requests go to `version` as well, fire and forget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorDoc {
    /// The version (of this service) that receives the copies.
    pub version: String,
    /// Share of the service's requests (of the listed methods) that are copied: more than 0, at
    /// most 100, two decimals.
    pub percent: f64,
    /// Only requests with these methods are copied (default `GET` and `HEAD`: copies of writes
    /// would write twice).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Largest request body copied, and largest response body compared (`"64KiB"`, at most
    /// 16MiB). A request with a larger body, or one without a length that grows past it, is not
    /// copied (skipped, reason `body`): the copy is held in memory until it is sent.
    #[serde(default = "default_max_body")]
    pub max_body: String,
    /// Copies in flight at once, per service; past it a request is not copied (skipped, reason
    /// `in_flight`) rather than queued, so that a slow mirror cannot pile up memory or tasks.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A copy (the request and reading its answer) gives up after this (skipped, reason
    /// `timeout`), freeing its place under `max_in_flight`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Compare the mirror's status and body hash with the primary's answer (both bodies up to
    /// `max_body`); matches and mismatches are counted and a sample of mismatches is logged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compare: bool,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

fn default_max_body() -> String {
    "64KiB".into()
}

fn default_max_in_flight() -> usize {
    100
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A service's mirror, validated: what the data plane reads for each request of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// The service whose requests are copied (the metrics' `service` label).
    pub service: Arc<str>,
    /// The version that receives the copies (the metrics' `version` label, the version header).
    pub version: Arc<str>,
    /// The version's upstream: an index into the upstream names the policy was compiled with.
    pub upstream: usize,
    /// Share of requests copied, in [`BUCKETS`] (10000 = 100%).
    pub buckets: u32,
    pub methods: Vec<Method>,
    pub max_body: u64,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub compare: bool,
}

impl Mirror {
    /// Whether a request with this random number is in the copied share. The caller draws the
    /// number, independently of the one the split used (the same number would copy exactly the
    /// requests a split of the same share sends to the canary).
    pub fn draws(&self, random: u64) -> bool {
        (random % u64::from(BUCKETS)) < u64::from(self.buckets)
    }

    /// Whether requests with `method` may be copied.
    pub fn copies(&self, method: &Method) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

/// Validates `doc`, the `mirror` of `service` at `path`, and compiles it against the upstream
/// names (as [`super::compile`]). Every error names the field.
pub fn compile_mirror(
    doc: &MirrorDoc,
    service: &ServiceDoc,
    path: &FieldPath,
    upstreams: &[&str],
) -> Result<Mirror, CompileError> {
    let fail = |field: &str, message: String| CompileError {
        path: path.field(field),
        message,
    };
    let Some(upstream_name) = service.versions.get(&doc.version) else {
        let known: Vec<&str> = service.versions.keys().map(String::as_str).collect();
        return Err(fail(
            "version",
            format!(
                "unknown version `{}` (versions: {})",
                doc.version,
                known.join(", ")
            ),
        ));
    };
    // An unknown upstream is reported at `versions` by the service's own checks; here it only
    // has to be found.
    let upstream = upstreams
        .iter()
        .position(|u| !u.is_empty() && u == upstream_name)
        .ok_or_else(|| {
            fail(
                "version",
                format!("version `{}` has no known upstream", doc.version),
            )
        })?;
    if doc.percent.is_nan() || doc.percent <= 0.0 || doc.percent > 100.0 {
        return Err(fail(
            "percent",
            format!(
                "{} is not a share above 0 and at most 100 (remove `mirror` to stop mirroring)",
                doc.percent
            ),
        ));
    }
    let buckets = buckets_of_percent(doc.percent);
    if buckets == 0 {
        return Err(fail(
            "percent",
            format!("{} rounds to 0 (two decimals at most)", doc.percent),
        ));
    }
    if doc.methods.is_empty() {
        return Err(fail(
            "methods",
            "no method listed: nothing would be copied".into(),
        ));
    }
    let mut methods = Vec::with_capacity(doc.methods.len());
    for (i, m) in doc.methods.iter().enumerate() {
        let method = Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
            .ok()
            .filter(|_| !m.trim().is_empty() && m.trim() != "CONNECT")
            .ok_or_else(|| CompileError {
                path: path.field("methods").index(i),
                message: format!("`{m}` is not a method that can be copied"),
            })?;
        methods.push(method);
    }
    let max_body = parse_size(&doc.max_body).ok_or_else(|| {
        fail(
            "max_body",
            format!(
                "`{}` is not a size like \"64KiB\" or \"1MiB\"",
                doc.max_body
            ),
        )
    })?;
    if max_body > MAX_BODY_LIMIT {
        return Err(fail(
            "max_body",
            format!("`{}` is too large (at most 16MiB)", doc.max_body),
        ));
    }
    if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&doc.max_in_flight) {
        return Err(fail(
            "max_in_flight",
            format!(
                "{} is out of range (1 to {MAX_IN_FLIGHT_LIMIT})",
                doc.max_in_flight
            ),
        ));
    }
    if doc.timeout.is_zero() || doc.timeout > MAX_TIMEOUT {
        return Err(fail(
            "timeout",
            format!(
                "`{}` is out of range (above 0, at most 60s)",
                humantime::format_duration(doc.timeout)
            ),
        ));
    }
    Ok(Mirror {
        service: Arc::from(service.name.as_str()),
        version: Arc::from(doc.version.as_str()),
        upstream,
        buckets,
        methods,
        max_body,
        max_in_flight: doc.max_in_flight,
        timeout: doc.timeout,
        compare: doc.compare,
    })
}

/// A size as people write it (`"64KiB"`, `"1MB"`, `"4096"`).
fn parse_size(text: &str) -> Option<u64> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .ok()
        .map(|s| s.as_u64())
}

/// The mirrors of every service of a policy that compiled (so none fails here; one that would
/// is left out), in service order.
pub fn mirrors(doc: &PolicyDoc, upstreams: &[&str]) -> Vec<Mirror> {
    doc.services
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let m = s.mirror.as_ref()?;
            let path = FieldPath::new("services").index(i).field("mirror");
            compile_mirror(m, s, &path, upstreams).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile;
    use std::collections::BTreeMap;

    const UPSTREAMS: &[&str] = &["web-v1", "web-v2"];

    fn service(mirror: &str) -> ServiceDoc {
        let mirror: MirrorDoc = toml::from_str(mirror).expect("mirror parses");
        ServiceDoc {
            name: "web".into(),
            stable: "v1".into(),
            versions: BTreeMap::from([
                ("v1".into(), "web-v1".into()),
                ("v2".into(), "web-v2".into()),
            ]),
            override_: None,
            follow: false,
            rules: vec![],
            split: None,
            previous_stable: None,
            previous_weight: None,
            rollout: None,
            mirror: Some(mirror),
        }
    }

    fn compiled(mirror: &str) -> Result<Mirror, String> {
        let s = service(mirror);
        let path = FieldPath::new("services").index(0).field("mirror");
        compile_mirror(s.mirror.as_ref().unwrap(), &s, &path, UPSTREAMS).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_what_is_not_written() {
        let m = compiled("version = \"v2\"\npercent = 10").unwrap();
        assert_eq!(&*m.service, "web");
        assert_eq!(&*m.version, "v2");
        assert_eq!(m.upstream, 1);
        assert_eq!(m.buckets, 1000);
        assert_eq!(m.methods, vec![Method::GET, Method::HEAD]);
        assert_eq!(m.max_body, 64 * 1024);
        assert_eq!(m.max_in_flight, 100);
        assert_eq!(m.timeout, Duration::from_secs(2));
        assert!(!m.compare);
    }

    #[test]
    fn every_setting_is_read() {
        let m = compiled(
            "version = \"v2\"\npercent = 2.5\nmethods = [\"get\", \"POST\"]\nmax_body = \"1MiB\"\nmax_in_flight = 7\ntimeout = \"250ms\"\ncompare = true",
        )
        .unwrap();
        assert_eq!(m.buckets, 250);
        assert_eq!(m.methods, vec![Method::GET, Method::POST]);
        assert_eq!(m.max_body, 1024 * 1024);
        assert_eq!(m.max_in_flight, 7);
        assert_eq!(m.timeout, Duration::from_millis(250));
        assert!(m.compare);
        assert!(m.copies(&Method::POST) && !m.copies(&Method::PUT));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let cases = [
            (
                "version = \"v9\"\npercent = 10",
                "services[0].mirror.version: unknown version `v9` (versions: v1, v2)",
            ),
            (
                "version = \"v2\"\npercent = 0",
                "services[0].mirror.percent: 0 is not a share above 0 and at most 100 (remove `mirror` to stop mirroring)",
            ),
            (
                "version = \"v2\"\npercent = 100.5",
                "services[0].mirror.percent: 100.5 is not a share above 0 and at most 100 (remove `mirror` to stop mirroring)",
            ),
            (
                "version = \"v2\"\npercent = 0.001",
                "services[0].mirror.percent: 0.001 rounds to 0 (two decimals at most)",
            ),
            (
                "version = \"v2\"\npercent = 10\nmethods = []",
                "services[0].mirror.methods: no method listed: nothing would be copied",
            ),
            (
                "version = \"v2\"\npercent = 10\nmethods = [\"GET\", \"GE T\"]",
                "services[0].mirror.methods[1]: `GE T` is not a method that can be copied",
            ),
            (
                "version = \"v2\"\npercent = 10\nmax_body = \"lots\"",
                "services[0].mirror.max_body: `lots` is not a size like \"64KiB\" or \"1MiB\"",
            ),
            (
                "version = \"v2\"\npercent = 10\nmax_body = \"1GiB\"",
                "services[0].mirror.max_body: `1GiB` is too large (at most 16MiB)",
            ),
            (
                "version = \"v2\"\npercent = 10\nmax_in_flight = 0",
                "services[0].mirror.max_in_flight: 0 is out of range (1 to 100000)",
            ),
            (
                "version = \"v2\"\npercent = 10\ntimeout = \"0s\"",
                "services[0].mirror.timeout: `0s` is out of range (above 0, at most 60s)",
            ),
        ];
        for (mirror, expected) in cases {
            assert_eq!(compiled(mirror).unwrap_err(), expected, "{mirror}");
        }
    }

    #[test]
    fn a_policy_with_a_bad_mirror_does_not_compile() {
        let doc = PolicyDoc {
            routes: vec![],
            services: vec![service("version = \"v3\"\npercent = 10")],
            ..PolicyDoc::default()
        };
        let e = compile(&doc, UPSTREAMS).unwrap_err();
        assert_eq!(e.path.to_string(), "services[0].mirror.version");
        let good = PolicyDoc {
            routes: vec![],
            services: vec![service("version = \"v2\"\npercent = 10")],
            ..PolicyDoc::default()
        };
        compile(&good, UPSTREAMS).unwrap();
        assert_eq!(mirrors(&good, UPSTREAMS).len(), 1);
    }

    #[test]
    fn the_share_drawn_follows_the_percent() {
        let m = compiled("version = \"v2\"\npercent = 10").unwrap();
        let drawn = (0..100_000u64)
            .filter(|i| m.draws(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .count();
        assert!((9_000..11_000).contains(&drawn), "{drawn}");
        let all = compiled("version = \"v2\"\npercent = 100").unwrap();
        assert!((0..1000u64).all(|i| all.draws(i * 7919)));
    }

    #[test]
    fn a_service_without_a_mirror_serializes_without_the_field() {
        let mut s = service("version = \"v2\"\npercent = 10");
        s.mirror = None;
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("mirror"), "{json}");
    }
}
