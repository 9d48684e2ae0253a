//! Builders over the crate's own policy types ([`graygate::policy::model`]), so that a test states
//! a policy in a sentence: `service("web").stable("stable").version("canary", "canary")
//! .rule("beta", "canary", header("X-Env").equals("beta"))`.
//!
//! They build the very structs graygate reads; the gateway builder writes them with the TOML
//! serializer.

use graygate::policy::mirror::MirrorDoc;
use graygate::policy::model::{
    Condition, IdentityDoc, LookupDoc, ModuloDoc, OverrideDoc, RangeDoc, RangeFromDoc, RouteDoc,
    RuleDoc, ServiceDoc, SplitDoc, StickyCookieDoc,
};
use std::collections::BTreeMap;

/// A service under construction; see [`service`].
#[derive(Debug, Clone)]
pub struct Service(ServiceDoc);

/// A service named `name`, with no versions yet.
pub fn service(name: &str) -> Service {
    Service(ServiceDoc {
        name: name.into(),
        stable: String::new(),
        versions: BTreeMap::new(),
        override_: None,
        follow: false,
        rules: Vec::new(),
        split: None,
        previous_stable: None,
        previous_weight: None,
        rollout: None,
        mirror: None,
    })
}

impl Service {
    /// The stable version, answered by upstream `upstream`.
    pub fn stable(mut self, version: &str, upstream: &str) -> Self {
        self.0.stable = version.into();
        self.version(version, upstream)
    }

    /// Another version, answered by upstream `upstream`.
    pub fn version(mut self, version: &str, upstream: &str) -> Self {
        self.0.versions.insert(version.into(), upstream.into());
        self
    }

    /// A rule, after the ones already there: when `when` matches, `version` answers.
    pub fn rule(mut self, name: &str, version: &str, when: Condition) -> Self {
        self.0.rules.push(RuleDoc {
            name: name.into(),
            version: version.into(),
            when,
        });
        self
    }

    /// A tester override by header: `always` forces `version`, `never` keeps stable.
    pub fn override_header(mut self, header: &str, version: &str) -> Self {
        self.0.override_ = Some(OverrideDoc {
            header: Some(header.into()),
            cookie: None,
            version: version.into(),
            from: Vec::new(),
            secret: None,
            key: None,
        });
        self
    }

    /// A tester override by cookie.
    pub fn override_cookie(mut self, cookie: &str, version: &str) -> Self {
        self.0.override_ = Some(OverrideDoc {
            header: None,
            cookie: Some(cookie.into()),
            version: version.into(),
            from: Vec::new(),
            secret: None,
            key: None,
        });
        self
    }

    /// `percent` of the requests no rule decided go to `version`, sticky by `by`.
    pub fn split(mut self, version: &str, percent: f64, by: IdentityDoc) -> Self {
        let split = self.0.split.get_or_insert_with(SplitDoc::default);
        split.weights.insert(version.into(), percent);
        split.by = Some(by);
        self
    }

    /// `percent` of the requests no rule decided go to `version`, with no identity: each
    /// visitor is kept on its version by the bucket cookie `cookie`.
    pub fn cookie_split(mut self, version: &str, percent: f64, cookie: StickyCookieDoc) -> Self {
        let split = self.0.split.get_or_insert_with(SplitDoc::default);
        split.weights.insert(version.into(), percent);
        split.sticky_cookie = Some(cookie);
        self
    }

    /// Only clients inside `nets` may use the override's `always`. Call after an override.
    pub fn override_from(mut self, nets: &[&str]) -> Self {
        if let Some(o) = &mut self.0.override_ {
            o.from = nets.iter().map(|n| n.to_string()).collect();
        }
        self
    }

    /// The override's `always` needs this secret (`always:<secret>`). Call after an override.
    pub fn override_secret(mut self, secret: &str) -> Self {
        if let Some(o) = &mut self.0.override_ {
            o.secret = Some(secret.into());
        }
        self
    }

    /// Honour a trusted upstream graygate's version header.
    pub fn follow(mut self) -> Self {
        self.0.follow = true;
        self
    }
}

impl Service {
    /// The split's hash salt (default: the service name). Call after [`Service::split`].
    pub fn salt(mut self, salt: &str) -> Self {
        if let Some(split) = &mut self.0.split {
            split.salt = Some(salt.into());
        }
        self
    }
}

impl AsMut<ServiceDoc> for Service {
    fn as_mut(&mut self) -> &mut ServiceDoc {
        &mut self.0
    }
}

impl Service {
    /// A mirror: copies of `percent` of the requests go to `version` too; `tweak` changes the
    /// other settings from their defaults.
    pub fn mirror(
        mut self,
        version: &str,
        percent: f64,
        tweak: impl FnOnce(&mut MirrorDoc),
    ) -> Self {
        let mut mirror: MirrorDoc =
            toml::from_str(&format!("version = {version:?}\npercent = {percent:?}"))
                .expect("a mirror with its defaults");
        tweak(&mut mirror);
        self.0.mirror = Some(mirror);
        self
    }
}

impl From<Service> for ServiceDoc {
    fn from(service: Service) -> ServiceDoc {
        service.0
    }
}

/// A route to `service`: every host and path until narrowed.
pub fn route(service: &str) -> Route {
    Route(RouteDoc {
        name: None,
        hosts: Vec::new(),
        path_prefix: None,
        service: service.into(),
    })
}

/// A route under construction; see [`route`].
#[derive(Debug, Clone)]
pub struct Route(RouteDoc);

impl Route {
    pub fn named(mut self, name: &str) -> Self {
        self.0.name = Some(name.into());
        self
    }

    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.0.path_prefix = Some(prefix.into());
        self
    }

    pub fn hosts<const N: usize>(mut self, hosts: [&str; N]) -> Self {
        self.0.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }
}

impl From<Route> for RouteDoc {
    fn from(route: Route) -> RouteDoc {
        route.0
    }
}

/// The identity a split sticks to: a header.
pub fn by_header(name: &str) -> IdentityDoc {
    IdentityDoc {
        header: Some(name.into()),
        ..IdentityDoc::default()
    }
}

/// A condition on a request header; add the test with [`When`].
pub fn header(name: &str) -> Condition {
    Condition {
        header: Some(name.into()),
        ..Condition::default()
    }
}

/// A condition on a cookie.
pub fn cookie(name: &str) -> Condition {
    Condition {
        cookie: Some(name.into()),
        ..Condition::default()
    }
}

/// A condition on a query parameter.
pub fn query(name: &str) -> Condition {
    Condition {
        query: Some(name.into()),
        ..Condition::default()
    }
}

/// A condition on the client IP (as resolved through the trusted proxies).
pub fn client_ip() -> Condition {
    Condition {
        client_ip: Some(true),
        ..Condition::default()
    }
}

/// The client IP is in one of these networks.
pub fn cidr<const N: usize>(nets: [&str; N]) -> Condition {
    Condition {
        cidr: Some(strings(nets)),
        ..Condition::default()
    }
}

/// Every condition matches.
pub fn all<const N: usize>(conditions: [Condition; N]) -> Condition {
    Condition {
        all: Some(conditions.into()),
        ..Condition::default()
    }
}

/// At least one condition matches.
pub fn any<const N: usize>(conditions: [Condition; N]) -> Condition {
    Condition {
        any: Some(conditions.into()),
        ..Condition::default()
    }
}

/// The condition does not match.
pub fn not(condition: Condition) -> Condition {
    Condition {
        not: Some(Box::new(condition)),
        ..Condition::default()
    }
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The tests of a condition, added to a source: `header("X-Env").equals("beta")`.
pub trait When: Sized {
    fn equals(self, value: &str) -> Condition;
    /// `in = [...]`.
    fn one_of<const N: usize>(self, values: [&str; N]) -> Condition;
    fn regex(self, pattern: &str) -> Condition;
    /// `start..=end`.
    fn range(self, start: i64, end: i64) -> Condition;
    fn ids<const N: usize>(self, ids: [i64; N]) -> Condition;
    fn suffix<const N: usize>(self, suffixes: [&str; N]) -> Condition;
    fn modulo<const N: usize>(self, divisor: u64, remainders: [u64; N]) -> Condition;
    fn percent(self, percent: f64) -> Condition;
    fn present(self) -> Condition;
    /// The source goes through store list `list` first (key = the value).
    fn lookup(self, list: &str) -> Condition;
    /// Through store list `list` under `key` (`{}` is the value): `lookup_key("redis", "TOKEN_{}")`.
    fn lookup_key(self, list: &str, key: &str) -> Condition;
    /// Inside the range kept as JSON under `key` in `list`, both ends excluded (the original
    /// OpenResty design's `Grayscale_Range`).
    fn range_from_exclusive(self, list: &str, key: &str) -> Condition;
}

impl When for Condition {
    fn equals(mut self, value: &str) -> Condition {
        self.equals = Some(value.into());
        self
    }

    fn one_of<const N: usize>(mut self, values: [&str; N]) -> Condition {
        self.in_ = Some(strings(values));
        self
    }

    fn regex(mut self, pattern: &str) -> Condition {
        self.regex = Some(pattern.into());
        self
    }

    fn range(mut self, start: i64, end: i64) -> Condition {
        self.range = Some(RangeDoc {
            start,
            end,
            exclusive: false,
        });
        self
    }

    fn ids<const N: usize>(mut self, ids: [i64; N]) -> Condition {
        self.ids = Some(ids.into());
        self
    }

    fn suffix<const N: usize>(mut self, suffixes: [&str; N]) -> Condition {
        self.suffix = Some(strings(suffixes));
        self
    }

    fn modulo<const N: usize>(mut self, divisor: u64, remainders: [u64; N]) -> Condition {
        self.modulo = Some(ModuloDoc {
            divisor,
            remainders: remainders.into(),
        });
        self
    }

    fn percent(mut self, percent: f64) -> Condition {
        self.percent = Some(percent);
        self
    }

    fn present(mut self) -> Condition {
        self.present = Some(true);
        self
    }

    fn lookup(mut self, list: &str) -> Condition {
        self.lookup = Some(LookupDoc {
            list: list.into(),
            key: None,
        });
        self
    }

    fn lookup_key(mut self, list: &str, key: &str) -> Condition {
        self.lookup = Some(LookupDoc {
            list: list.into(),
            key: Some(key.into()),
        });
        self
    }

    fn range_from_exclusive(mut self, list: &str, key: &str) -> Condition {
        self.range_from = Some(RangeFromDoc {
            list: list.into(),
            key: key.into(),
            start: "idStart".into(),
            end: "idEnd".into(),
            exclusive: true,
        });
        self
    }
}

/// The service most tests route to: `web`, whose `stable` version is upstream `stable` and whose
/// `canary` version is upstream `canary`.
pub fn web() -> Service {
    service("web")
        .stable("stable", "stable")
        .version("canary", "canary")
}
