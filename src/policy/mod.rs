//! The policy core: which version of which service answers a request, and why.
//!
//! PURE: no I/O, no async, no clock, no randomness of its own. The data plane gathers the facts of
//! a request ([`RequestFacts`]), and the policy answers with a [`Decision`] that carries its
//! [`Reason`]. Values that live in a store (gray lists, token -> user id) come in through the
//! [`Lookups`] trait; when one is not known yet, evaluation stops with
//! [`Evaluation::NeedLookup`] and the caller fetches it and evaluates again, so that the core never
//! waits on anything.
//!
//! - `model`: the serde types operators write (TOML, JSON).
//! - `compile`: validates a [`PolicyDoc`] as a whole and builds lookup structures whose cost does
//!   not grow with list sizes (hash sets, CIDR tables by prefix length, host maps).
//! - `compiled`: the compiled rule types (rule, condition, source, test) that `compile` builds,
//!   `index` files and `evaluate` walks; below both, so that neither reaches into the other.
//! - `index`: per-service rule indexes, the first matching rule without walking every rule.
//! - `request`: reading a request: the value of a header, a cookie, a query parameter or the
//!   client IP, each read at most once per evaluation, and read as a number the way the original
//!   Lua designs did.
//! - `evaluate`: request facts -> decision.
//! - [`token`]: the values the core signs and checks: bucket cookies, tester override secrets.
//! - `oracle` (tests only): the plain linear evaluator the indexed one is checked against.
//! - [`path`]: [`FieldPath`], where a field is in a document (`services[0].rules[1].when`), for
//!   every validation error of compile, edit and the config.
//! - [`mirror`]: a service's traffic mirror (shadow traffic): its settings, checks and
//!   compiled form.
//! - [`upstreams`]: upstreams in the shared policy (servers, weights, drained, protocol, TLS,
//!   health) and their edits; built into the data plane's table outside the core.
//! - [`edit`]: the admin API's edits of a document (routes, rules, weights, promote, rollback)
//!   as pure functions, and the checks it makes beyond `compile`.

mod compile;
mod compiled;
pub mod edit;
mod evaluate;
#[cfg(test)]
mod generated;
mod hash;
pub(crate) use hash::FastState;
mod index;
mod iptable;
pub mod mirror;
pub mod model;
#[cfg(test)]
mod oracle;
pub mod path;
mod request;
pub mod token;
pub mod upstreams;

pub use compile::{buckets_of_percent, compile, CompileError, Policy, BUCKETS};
pub use evaluate::{bucket_of, Evaluation};
pub use iptable::IpTable;
pub use model::PolicyDoc;
pub use path::FieldPath;
pub use request::push_ip;

use std::net::IpAddr;
use std::sync::Arc;

/// What the policy needs to know about a request. Borrowed from the request: building it costs no
/// allocation.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// `Host` header (or URI authority), possibly with a port.
    pub host: &'a str,
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The client IP as the data plane resolved it (trusted proxies applied).
    pub client_ip: IpAddr,
    /// The key a list lookup by client IP uses instead of `client_ip`'s text, when the client
    /// IP mode says so (`original`: the header's text as sent, a multi-hop `X-Forwarded-For`
    /// whole); `None`: the client IP's text. Only lookups read it: `cidr` and every other test
    /// of `client_ip` see the address.
    pub client_key: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// A random number for splits without an identity and for new bucket ids; the caller draws
    /// it.
    pub random: u64,
    /// The current time in Unix seconds, for the expiry of signed override values.
    pub now: u64,
    /// The request came over HTTPS (a bucket cookie is then `Secure` by default).
    pub https: bool,
    /// The version an upstream graygate chose for this request (its version header), passed on
    /// only when the request came from a trusted proxy; a service that `follow`s honours it.
    pub followed: Option<&'a str>,
}

/// The answer of a store lookup, as far as the caller knows it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    /// The store holds this value under the key.
    Value(Arc<str>),
    /// The store holds nothing under the key.
    Absent,
    /// The store could not answer (down, timeout). The condition is false: fail safe to stable.
    Unavailable,
    /// Not known yet: evaluation returns [`Evaluation::NeedLookup`].
    Unknown,
}

/// Store values as the caller knows them (a cache, a per-request map).
pub trait Lookups {
    /// The value of `key` in `list`, or [`LookupAnswer::Unknown`] if it must be fetched first.
    fn get(&self, list: &str, key: &str) -> LookupAnswer;
}

/// No store values at all: every lookup is absent. For policies without lookups and for tests.
pub struct NoLookups;

impl Lookups for NoLookups {
    fn get(&self, _list: &str, _key: &str) -> LookupAnswer {
        LookupAnswer::Absent
    }
}

/// Which version answers a request. Its names are shared with the [`Policy`] it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The route, service and version names ([`Decision::route`] and the others read them).
    pub names: Arc<DecisionNames>,
    /// Index into the upstream names given to [`compile`].
    pub upstream: usize,
    /// The stable version's upstream: where the request goes if `upstream` cannot be reached.
    pub stable_upstream: usize,
    pub reason: Reason,
    /// Something refused or replaced on the way to the decision (counted and logged).
    pub note: Option<Note>,
    /// A `Set-Cookie` value the response carries: the new bucket cookie of a visitor who had
    /// none (or an invalid one). The only allocation of a decision, once per visitor.
    pub set_cookie: Option<String>,
}

/// What a decision passed over: an override or a followed version that was not honoured, or a
/// bucket cookie that was set. Each has its own counter (`label`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// The override said `always` from a client outside its `from` networks.
    OverrideFromOutside,
    /// The override said `always` without its secret or a valid signature.
    OverrideBadSecret,
    /// The override's signed value has expired.
    OverrideExpired,
    /// A trusted peer's version header named no version of the service.
    FollowUnknownVersion,
    /// A version header came from a peer that is not a trusted proxy: removed, not believed.
    FollowUntrusted,
    /// A visitor without a bucket cookie got one.
    BucketCookieNew,
    /// A visitor's bucket cookie was invalid (forged, unsigned, malformed) and was replaced.
    BucketCookieReplaced,
}

impl Note {
    pub fn label(self) -> &'static str {
        match self {
            Note::OverrideFromOutside => "override_refused:network",
            Note::OverrideBadSecret => "override_refused:secret",
            Note::OverrideExpired => "override_refused:expired",
            Note::FollowUnknownVersion => "follow_refused:unknown_version",
            Note::FollowUntrusted => "follow_refused:untrusted",
            Note::BucketCookieNew => "bucket_cookie:new",
            Note::BucketCookieReplaced => "bucket_cookie:replaced",
        }
    }
}

/// The names a decision carries, made once per route and version when the policy is compiled:
/// a decision shares all four through one reference count, not one each (every count is an
/// atomic add when a decision is made and another when it is dropped).
#[derive(Debug, PartialEq, Eq)]
pub struct DecisionNames {
    pub route: Arc<str>,
    pub service: Arc<str>,
    pub version: Arc<str>,
    /// The service's stable version.
    pub stable_version: Arc<str>,
}

impl DecisionNames {
    /// The four names, shared.
    pub fn new(
        route: impl Into<Arc<str>>,
        service: impl Into<Arc<str>>,
        version: impl Into<Arc<str>>,
        stable_version: impl Into<Arc<str>>,
    ) -> Arc<DecisionNames> {
        Arc::new(DecisionNames {
            route: route.into(),
            service: service.into(),
            version: version.into(),
            stable_version: stable_version.into(),
        })
    }
}

impl Decision {
    pub fn route(&self) -> &str {
        &self.names.route
    }

    pub fn service(&self) -> &str {
        &self.names.service
    }

    pub fn version(&self) -> &str {
        &self.names.version
    }

    /// The service's stable version: where the request goes if the chosen one cannot be reached.
    pub fn stable_version(&self) -> &str {
        &self.names.stable_version
    }

    /// The version that answered: the chosen one, or stable when the request fell back to it.
    pub fn answered_by(&self, fell_back: bool) -> &Arc<str> {
        if fell_back {
            &self.names.stable_version
        } else {
            &self.names.version
        }
    }

    /// True when the decision sends the request to the stable version.
    pub fn is_stable(&self) -> bool {
        self.names.version == self.names.stable_version
    }
}

/// Why a decision was taken: for logs, metrics and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The tester override header or cookie said `always` or `never`.
    Override { value: OverrideValue },
    /// This rule matched (first match wins).
    Rule { name: RuleName },
    /// No rule matched; the weighted split put the request in this bucket (0..10000).
    Split { bucket: u32, sticky: bool },
    /// No rule matched and the request had no split identity: the split put the bucket id of
    /// its bucket cookie (`new`: just given) in this bucket.
    Bucket { bucket: u32, new: bool },
    /// A trusted upstream graygate chose the version (`follow`).
    Followed,
    /// No rule matched and no split sent it elsewhere: stable.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideValue {
    Always,
    Never,
}

impl Reason {
    /// The `reason` label of the decision in metrics: bounded, so that a split's bucket does not
    /// make a series per bucket. `rule:<name>` and `override:always|never` name what decided
    /// (rule names are few, written by operators); a split, sticky or random, is `split`; no rule
    /// and no split is `default`. A borrow, never built per request.
    pub fn label(&self) -> &str {
        match self {
            Reason::Override {
                value: OverrideValue::Always,
            } => "override:always",
            Reason::Override {
                value: OverrideValue::Never,
            } => "override:never",
            Reason::Rule { name } => name.label(),
            Reason::Split { .. } => "split",
            Reason::Bucket { .. } => "split:cookie",
            Reason::Followed => "followed",
            Reason::Default => "default",
        }
    }
}

/// A rule's name as its decisions carry it: one shared string `rule:<name>`, made once when the
/// policy is compiled, so that the reason label of every decision the rule makes (metrics, the
/// access log) is a borrow rather than a string built per request.
#[derive(Clone, PartialEq, Eq)]
pub struct RuleName(Arc<str>);

impl RuleName {
    const PREFIX: &'static str = "rule:";

    pub fn new(name: &str) -> Self {
        RuleName(format!("{}{name}", Self::PREFIX).into())
    }

    /// The name as the operator wrote it.
    pub fn as_str(&self) -> &str {
        &self.0[Self::PREFIX.len()..]
    }

    /// `rule:<name>`, the decision's reason label.
    pub fn label(&self) -> &str {
        &self.0
    }
}

impl From<&str> for RuleName {
    fn from(name: &str) -> Self {
        RuleName::new(name)
    }
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Override {
                value: OverrideValue::Always,
            } => f.write_str("override:always"),
            Reason::Override {
                value: OverrideValue::Never,
            } => f.write_str("override:never"),
            Reason::Rule { name } => f.write_str(name.label()),
            Reason::Split {
                bucket,
                sticky: true,
            } => write!(f, "split:sticky:{bucket}"),
            Reason::Split {
                bucket,
                sticky: false,
            } => write!(f, "split:random:{bucket}"),
            Reason::Bucket { bucket, new: false } => write!(f, "split:cookie:{bucket}"),
            Reason::Bucket { bucket, new: true } => write!(f, "split:cookie:{bucket}:new"),
            Reason::Followed => f.write_str("followed"),
            Reason::Default => f.write_str("default"),
        }
    }
}
