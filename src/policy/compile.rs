//! Validates a [`PolicyDoc`] as a whole and compiles it into the structures evaluation walks.
//!
//! Everything an operator can get wrong is caught here, with the path of the offending field
//! (`services[0].rules[2].when.cidr[1]`), so that a bad policy is rejected before it replaces the
//! running one. Lists become hash sets and CIDR tables; hosts become a hash map; regexes are built
//! once. Each service numbers the distinct sources it reads (so that evaluation reads each at most
//! once per request) and indexes its rules (see `index`).

use super::compiled::{Cond, Lookup, Rule, Source, Test};
use super::index::RuleIndex;
use super::iptable::IpTable;
use super::model::*;
use super::path::FieldPath;
use super::token::SigningKey;
use http::HeaderName;
use regex::Regex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A policy that failed validation: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    /// The field, as a path into the document (`services[0].rules[2].version`).
    pub path: FieldPath,
    pub message: String,
}

fn err<T>(path: FieldPath, message: impl Into<String>) -> Result<T, CompileError> {
    Err(CompileError {
        path,
        message: message.into(),
    })
}

/// Whether `c` is an RFC 9110 `tchar`: a character a header field value can carry as a token.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Checks that the name of a service, version or rule (`what`) holds only token characters.
/// Names go out in response headers (`X-Gray-Version`), metric labels and logs: a CR or LF in one
/// would inject a header, a space or quote would break the log and metric formats.
fn check_token(path: FieldPath, what: &str, name: &str) -> Result<(), CompileError> {
    if name.chars().all(is_tchar) {
        return Ok(());
    }
    err(
        path,
        format!(
            "{what} name {name:?} may hold only token characters (letters, digits and !#$%&'*+-.^_`|~)"
        ),
    )
}

/// A compiled, validated policy: immutable, shared by every request that started while it was
/// current.
#[derive(Debug)]
pub struct Policy {
    pub(super) doc: PolicyDoc,
    pub(super) routes: RouteTable,
    pub(super) services: Vec<Service>,
    pub(super) lists: Vec<Arc<str>>,
}

impl Policy {
    /// The document this policy was compiled from.
    pub fn doc(&self) -> &PolicyDoc {
        &self.doc
    }

    /// Names of the store lists the rules look values up in.
    pub fn lookup_lists(&self) -> &[Arc<str>] {
        &self.lists
    }
}

#[derive(Debug, Default)]
pub(super) struct RouteTable {
    /// Exact host -> routes, longest path prefix first.
    pub exact: HashMap<String, Vec<RouteEntry>>,
    /// `*.example.com` as `.example.com` -> routes, longest suffix first.
    pub wildcard: Vec<(String, Vec<RouteEntry>)>,
    /// Routes without hosts.
    pub any: Vec<RouteEntry>,
}

#[derive(Debug, Clone)]
pub(super) struct RouteEntry {
    /// Without a trailing `/` (empty for `/`), so that matching on `/` boundaries is a comparison.
    pub prefix: String,
    pub service: usize,
    /// A decision's names on this route, one per version of the service, by version index.
    pub names: Arc<[Arc<super::DecisionNames>]>,
}

#[derive(Debug)]
pub(super) struct Service {
    pub name: Arc<str>,
    pub stable: usize,
    pub versions: Vec<Version>,
    pub override_: Option<Override>,
    pub rules: Vec<Rule>,
    pub split: Option<Split>,
    /// Honour a trusted peer's version header.
    pub follow: bool,
    /// Every distinct source the override, the rules and the split read; `slot` fields index it.
    pub sources: Vec<Source>,
    /// Finds the first matching rule.
    pub index: RuleIndex,
}

#[derive(Debug)]
pub(super) struct Version {
    pub name: Arc<str>,
    pub upstream: usize,
}

#[derive(Debug)]
pub(super) struct Override {
    /// The header or cookie's slot in [`Service::sources`].
    pub slot: usize,
    pub version: usize,
    /// Networks allowed to say `always`; `None`: any.
    pub from: Option<IpTable>,
    pub secret: Option<String>,
    pub key: Option<SigningKey>,
}

#[derive(Debug)]
pub(super) struct Split {
    /// The identity's slot in [`Service::sources`].
    pub by: Option<usize>,
    pub seed: u64,
    /// (bucket upper bound exclusive, version), ascending; buckets past the last go to stable.
    pub bounds: Vec<(u32, usize)>,
    pub cookie: Option<BucketCookie>,
}

/// A split's bucket cookie, compiled: its slot, and the `Set-Cookie` attributes written once.
#[derive(Debug)]
pub(super) struct BucketCookie {
    pub slot: usize,
    pub name: String,
    /// `; Max-Age=..; Path=..[; HttpOnly]; SameSite=..`
    pub attributes: String,
    /// `Secure`: `None` on HTTPS only.
    pub secure: Option<bool>,
    pub key: Option<SigningKey>,
}

/// Buckets per 100%: percentages have two decimals.
pub const BUCKETS: u32 = 10_000;

/// Validates `doc` and builds the policy. `upstreams` are the upstream names of the config, in
/// the order of the data plane's upstream table; a version's upstream is resolved to its index
/// in that slice. An empty name is a slot no policy may name (an upstream a config reload
/// removed keeps its index empty, so that the others keep theirs).
pub fn compile(doc: &PolicyDoc, upstreams: &[&str]) -> Result<Policy, CompileError> {
    let mut services = Vec::with_capacity(doc.services.len());
    let mut service_index: HashMap<&str, usize> = HashMap::new();
    let mut lists: Vec<Arc<str>> = Vec::new();
    for (i, s) in doc.services.iter().enumerate() {
        let path = FieldPath::new("services").index(i);
        if s.name.trim().is_empty() {
            return err(path.field("name"), "a service needs a name");
        }
        check_token(path.field("name"), "service", &s.name)?;
        if service_index.insert(&s.name, i).is_some() {
            return err(
                path.field("name"),
                format!("service `{}` is defined twice", s.name),
            );
        }
        services.push(compile_service(s, &path, upstreams, &mut lists)?);
    }

    let mut routes = RouteTable::default();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (i, r) in doc.routes.iter().enumerate() {
        let path = FieldPath::new("routes").index(i);
        let Some(&service) = service_index.get(r.service.as_str()) else {
            return err(
                path.field("service"),
                format!("unknown service `{}`", r.service),
            );
        };
        let prefix = r.path_prefix.as_deref().unwrap_or("/");
        if !prefix.starts_with('/') {
            return err(
                path.field("path_prefix"),
                format!("`{prefix}` must start with `/`"),
            );
        }
        let name: Arc<str> = Arc::from(r.name.as_deref().unwrap_or(&r.service));
        let s = &services[service];
        let names = s
            .versions
            .iter()
            .map(|v| {
                super::DecisionNames::new(
                    name.clone(),
                    s.name.clone(),
                    v.name.clone(),
                    s.versions[s.stable].name.clone(),
                )
            })
            .collect();
        let entry = RouteEntry {
            prefix: prefix.trim_end_matches('/').to_string(),
            service,
            names,
        };
        let hosts: Vec<Option<String>> = if r.hosts.is_empty() {
            vec![None]
        } else {
            let mut hosts = Vec::new();
            for (h, host) in r.hosts.iter().enumerate() {
                // Requests are routed on their canonical host, without a trailing dot
                // (`shop.example.` is `shop.example`): so is the route's.
                let host = host.trim().to_ascii_lowercase();
                let host = match host.strip_suffix('.') {
                    Some(bare) if !bare.is_empty() => bare.to_string(),
                    _ => host,
                };
                if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
                    return err(
                        path.field("hosts").index(h),
                        format!("`{host}` is not a host name"),
                    );
                }
                hosts.push(Some(host));
            }
            hosts
        };
        for host in hosts {
            let key = (host.clone().unwrap_or_default(), entry.prefix.clone());
            if !seen.insert(key) {
                return err(
                    path.clone(),
                    format!(
                        "another route already serves host `{}` with path prefix `{prefix}`",
                        host.as_deref().unwrap_or("*")
                    ),
                );
            }
            let bucket = match host {
                None => &mut routes.any,
                Some(h) if h.starts_with("*.") => {
                    let suffix = h[1..].to_string();
                    match routes.wildcard.iter().position(|(s, _)| *s == suffix) {
                        Some(at) => &mut routes.wildcard[at].1,
                        None => {
                            routes.wildcard.push((suffix, Vec::new()));
                            &mut routes.wildcard.last_mut().expect("just pushed").1
                        }
                    }
                }
                Some(h) => routes.exact.entry(h).or_default(),
            };
            bucket.push(entry.clone());
        }
    }
    let by_prefix = |v: &mut Vec<RouteEntry>| v.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes.exact.values_mut().for_each(by_prefix);
    routes.wildcard.iter_mut().for_each(|(_, v)| by_prefix(v));
    routes
        .wildcard
        .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
    by_prefix(&mut routes.any);

    Ok(Policy {
        doc: doc.clone(),
        routes,
        services,
        lists,
    })
}

fn compile_service(
    s: &ServiceDoc,
    path: &FieldPath,
    upstreams: &[&str],
    lists: &mut Vec<Arc<str>>,
) -> Result<Service, CompileError> {
    if s.versions.is_empty() {
        return err(
            path.field("versions"),
            "a service needs at least one version",
        );
    }
    let mut versions = Vec::with_capacity(s.versions.len());
    for (name, upstream) in &s.versions {
        // The path stops at `versions`: the bad name is no key to show as one.
        check_token(path.field("versions"), "version", name)?;
        let named = |u: &&str| !u.is_empty();
        let Some(u) = upstreams.iter().position(|u| named(u) && u == upstream) else {
            let known: Vec<&str> = upstreams.iter().copied().filter(named).collect();
            return err(
                path.field("versions").field(name),
                format!(
                    "unknown upstream `{upstream}` (configured upstreams: {})",
                    known.join(", ")
                ),
            );
        };
        versions.push(Version {
            name: Arc::from(name.as_str()),
            upstream: u,
        });
    }
    let version = |field: FieldPath, name: &str| -> Result<usize, CompileError> {
        versions.iter().position(|v| &*v.name == name).map_or_else(
            || {
                let known: Vec<&str> = versions.iter().map(|v| &*v.name).collect();
                err(
                    field,
                    format!("unknown version `{name}` (versions: {})", known.join(", ")),
                )
            },
            Ok,
        )
    };
    let stable = version(path.field("stable"), &s.stable)?;
    if let Some(previous) = &s.previous_stable {
        version(path.field("previous_stable"), previous)?;
    }
    // Without `previous_stable` there is no promote to undo and a rollback ignores it.
    if let Some(weight) = s.previous_weight {
        percent_to_buckets(&path.field("previous_weight"), weight)?;
    }
    if let Some(rollout) = &s.rollout {
        if let Err((field, message)) = rollout.check(s, &path.field("rollout")) {
            return err(field, message);
        }
    }
    if let Some(mirror) = &s.mirror {
        super::mirror::compile_mirror(mirror, s, &path.field("mirror"), upstreams)?;
    }

    let mut sources: Vec<Source> = Vec::new();
    let override_ = match &s.override_ {
        None => None,
        Some(o) => {
            let opath = path.field("override");
            let source = match (&o.header, &o.cookie) {
                (Some(h), None) => Source::Header(header_name(&opath.field("header"), h)?),
                (None, Some(c)) => Source::Cookie(c.clone()),
                _ => return err(opath, "needs exactly one of `header` or `cookie`"),
            };
            let from = if o.from.is_empty() {
                None
            } else {
                let mut table = IpTable::new();
                for (i, n) in o.from.iter().enumerate() {
                    table.insert(
                        IpTable::parse_net(n).or_else(|e| err(opath.field("from").index(i), e))?,
                    );
                }
                Some(table)
            };
            if let Some(secret) = &o.secret {
                secret_text(&opath.field("secret"), secret)?;
            }
            if let Some(key) = &o.key {
                secret_text(&opath.field("key"), key)?;
            }
            Some(Override {
                slot: slot_of(&mut sources, &source),
                version: version(opath.field("version"), &o.version)?,
                from,
                secret: o.secret.clone(),
                key: o.key.as_deref().map(SigningKey::new),
            })
        }
    };

    let mut rules = Vec::with_capacity(s.rules.len());
    let mut names = HashSet::new();
    for (i, r) in s.rules.iter().enumerate() {
        let rpath = path.field("rules").index(i);
        if r.name.trim().is_empty() {
            return err(rpath.field("name"), "a rule needs a name");
        }
        check_token(rpath.field("name"), "rule", &r.name)?;
        if !names.insert(r.name.as_str()) {
            return err(
                rpath.field("name"),
                format!("rule `{}` is defined twice", r.name),
            );
        }
        let v = version(rpath.field("version"), &r.version)?;
        let cond = compile_cond(&r.when, &rpath.field("when"), &r.name, lists, &mut sources)?;
        rules.push(Rule {
            name: super::RuleName::new(&r.name),
            version: v,
            cond,
        });
    }

    let split = match &s.split {
        None => None,
        Some(sp) => {
            let spath = path.field("split");
            let by = sp
                .by
                .as_ref()
                .map(|b| identity_source(b, &spath.field("by")))
                .transpose()?
                .map(|source| slot_of(&mut sources, &source));
            let mut bounds = Vec::new();
            let mut total = 0u32;
            for (name, weight) in &sp.weights {
                let wpath = spath.field("weights").field(name);
                let v = version(wpath.clone(), name)?;
                if v == stable {
                    return err(
                        wpath,
                        "the stable version gets what the other weights leave; do not weigh it",
                    );
                }
                total += percent_to_buckets(&wpath, *weight)?;
                if total > BUCKETS {
                    return err(
                        spath.field("weights"),
                        format!(
                            "weights add up to more than 100 ({:.2})",
                            f64::from(total) / 100.0
                        ),
                    );
                }
                bounds.push((total, v));
            }
            let salt = sp.salt.clone().unwrap_or_else(|| s.name.clone());
            let cookie = sp
                .sticky_cookie
                .as_ref()
                .map(|c| bucket_cookie(c, &spath.field("sticky_cookie"), &mut sources))
                .transpose()?;
            Some(Split {
                by,
                seed: seed_of(&salt),
                bounds,
                cookie,
            })
        }
    };

    let index = RuleIndex::build(&rules, &sources);
    Ok(Service {
        name: Arc::from(s.name.as_str()),
        stable,
        versions,
        override_,
        rules,
        split,
        follow: s.follow,
        sources,
        index,
    })
}

/// Secrets and keys are at least 16 bytes: shorter ones are guessed.
fn secret_text(path: &FieldPath, secret: &str) -> Result<(), CompileError> {
    if secret.len() < 16 {
        return err(path.clone(), "needs at least 16 characters");
    }
    Ok(())
}

fn bucket_cookie(
    c: &StickyCookieDoc,
    path: &FieldPath,
    sources: &mut Vec<Source>,
) -> Result<BucketCookie, CompileError> {
    let token = |t: &str| !t.is_empty() && t.chars().all(is_tchar);
    if !token(&c.name) {
        return err(
            path.field("name"),
            format!("{:?} is not a cookie name (token characters only)", c.name),
        );
    }
    if !c.path.starts_with('/') || c.path.chars().any(|ch| ch.is_control() || ch == ';') {
        return err(
            path.field("path"),
            format!(
                "{:?} is not a cookie path (starts with `/`, no `;`)",
                c.path
            ),
        );
    }
    if c.max_age.as_secs() == 0 {
        return err(path.field("max_age"), "must be at least one second");
    }
    if let Some(key) = &c.key {
        secret_text(&path.field("key"), key)?;
    }
    if c.same_site == SameSite::None && c.secure == Some(false) {
        return err(
            path.field("same_site"),
            "SameSite=None needs Secure; browsers drop such a cookie without it",
        );
    }
    let same_site = match c.same_site {
        SameSite::Lax => "Lax",
        SameSite::Strict => "Strict",
        SameSite::None => "None",
    };
    let attributes = format!(
        "; Max-Age={}; Path={}{}; SameSite={same_site}",
        c.max_age.as_secs(),
        c.path,
        if c.http_only { "; HttpOnly" } else { "" },
    );
    Ok(BucketCookie {
        slot: slot_of(sources, &Source::Cookie(c.name.clone())),
        name: c.name.clone(),
        attributes,
        secure: if c.same_site == SameSite::None {
            Some(true)
        } else {
            c.secure
        },
        key: c.key.as_deref().map(SigningKey::new),
    })
}

/// The slot of `source` in a service's source table, added if new.
fn slot_of(sources: &mut Vec<Source>, source: &Source) -> usize {
    match sources.iter().position(|s| s == source) {
        Some(at) => at,
        None => {
            sources.push(source.clone());
            sources.len() - 1
        }
    }
}

/// Records that the policy reads `name` (for cache warm-up and invalidation) and returns it shared.
fn register_list(lists: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    match lists.iter().find(|l| &***l == name) {
        Some(known) => known.clone(),
        None => {
            let list: Arc<str> = Arc::from(name);
            lists.push(list.clone());
            list
        }
    }
}

fn percent_to_buckets(path: &FieldPath, percent: f64) -> Result<u32, CompileError> {
    if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
        return err(
            path.clone(),
            format!("{percent} is not a percentage from 0 to 100"),
        );
    }
    Ok(buckets_of_percent(percent))
}

/// How many of the [`BUCKETS`] a valid percentage (0 to 100) takes: two decimals, rounded. What
/// routing does with a weight, so that whatever shows a split (ctl, the admin API's readers)
/// shows the share that requests really get, and the shares add up to 100.
pub fn buckets_of_percent(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 100.0).round() as u32
}

pub(super) fn seed_of(salt: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(salt.as_bytes())
}

fn header_name(path: &FieldPath, name: &str) -> Result<HeaderName, CompileError> {
    HeaderName::from_bytes(name.trim().as_bytes())
        .or_else(|_| err(path.clone(), format!("`{name}` is not a valid header name")))
}

fn identity_source(id: &IdentityDoc, path: &FieldPath) -> Result<Source, CompileError> {
    let mut found = Vec::new();
    if let Some(h) = &id.header {
        found.push(Source::Header(header_name(&path.field("header"), h)?));
    }
    if let Some(c) = &id.cookie {
        found.push(Source::Cookie(c.clone()));
    }
    if let Some(q) = &id.query {
        found.push(Source::Query(q.clone()));
    }
    if id.client_ip == Some(true) {
        found.push(Source::ClientIp);
    }
    if found.len() != 1 {
        return err(
            path.clone(),
            "needs exactly one of `header`, `cookie`, `query` or `client_ip = true`",
        );
    }
    Ok(found.pop().expect("one source"))
}

fn compile_cond(
    c: &Condition,
    path: &FieldPath,
    rule: &str,
    lists: &mut Vec<Arc<str>>,
    sources: &mut Vec<Source>,
) -> Result<Cond, CompileError> {
    let combinators = [c.all.is_some(), c.any.is_some(), c.not.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let source_given =
        c.header.is_some() || c.cookie.is_some() || c.query.is_some() || c.client_ip.is_some();
    let tests: Vec<&str> = [
        ("equals", c.equals.is_some()),
        ("in", c.in_.is_some()),
        ("regex", c.regex.is_some()),
        ("cidr", c.cidr.is_some()),
        ("range", c.range.is_some()),
        ("range_from", c.range_from.is_some()),
        ("ids", c.ids.is_some()),
        ("suffix", c.suffix.is_some()),
        ("modulo", c.modulo.is_some()),
        ("percent", c.percent.is_some()),
        ("present", c.present.is_some()),
    ]
    .iter()
    .filter(|(_, given)| *given)
    .map(|(name, _)| *name)
    .collect();

    if combinators > 0 {
        if combinators > 1 || source_given || !tests.is_empty() || c.lookup.is_some() {
            return err(
                path.clone(),
                "`all`, `any` and `not` stand alone: put other tests inside them",
            );
        }
        let mut list = |items: &Vec<Condition>, key: &str| {
            if items.is_empty() {
                return err(path.field(key), "needs at least one condition");
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    compile_cond(item, &path.field(key).index(i), rule, lists, sources)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        return Ok(match (&c.all, &c.any, &c.not) {
            (Some(items), _, _) => Cond::All(list(items, "all")?),
            (_, Some(items), _) => Cond::Any(list(items, "any")?),
            (_, _, Some(inner)) => Cond::Not(Box::new(compile_cond(
                inner,
                &path.field("not"),
                rule,
                lists,
                sources,
            )?)),
            _ => unreachable!("one combinator is set"),
        });
    }

    if tests.len() != 1 {
        let msg = if tests.is_empty() {
            "needs one test: equals, in, regex, cidr, range, range_from, ids, suffix, modulo, percent or present".to_string()
        } else {
            format!(
                "has {} tests ({}); combine several with `all` or `any`",
                tests.len(),
                tests.join(", ")
            )
        };
        return err(path.clone(), msg);
    }
    if c.salt.is_some() && c.percent.is_none() {
        return err(path.field("salt"), "`salt` only goes with `percent`");
    }

    let source = if !source_given && c.cidr.is_some() && c.lookup.is_none() {
        Source::ClientIp
    } else {
        let id = IdentityDoc {
            header: c.header.clone(),
            cookie: c.cookie.clone(),
            query: c.query.clone(),
            client_ip: c.client_ip,
        };
        identity_source(&id, path)?
    };

    let lookup = match &c.lookup {
        None => None,
        Some(l) => {
            let lpath = path.field("lookup");
            if l.list.trim().is_empty() {
                return err(lpath.field("list"), "names no list");
            }
            let template = l.key.as_deref().unwrap_or("{}");
            let Some((before, after)) = template.split_once("{}") else {
                return err(
                    lpath.field("key"),
                    format!("`{template}` has no `{{}}` where the value goes"),
                );
            };
            if after.contains("{}") {
                return err(
                    lpath.field("key"),
                    format!("`{template}` has more than one `{{}}`"),
                );
            }
            let list = register_list(lists, &l.list);
            Some(Lookup {
                list,
                before: before.to_string(),
                after: after.to_string(),
            })
        }
    };

    let test = if let Some(v) = &c.equals {
        Test::Equals(v.clone())
    } else if let Some(set) = &c.in_ {
        if set.is_empty() {
            return err(path.field("in"), "the set is empty");
        }
        Test::In(set.iter().cloned().collect())
    } else if let Some(re) = &c.regex {
        Test::Regex(
            Regex::new(re).or_else(|e| err(path.field("regex"), format!("invalid regex: {e}")))?,
        )
    } else if let Some(nets) = &c.cidr {
        let mut table = IpTable::new();
        for (i, n) in nets.iter().enumerate() {
            table.insert(IpTable::parse_net(n).or_else(|e| err(path.field("cidr").index(i), e))?);
        }
        Test::Cidr(table)
    } else if let Some(r) = &c.range {
        let ok = if r.exclusive {
            r.start < r.end
        } else {
            r.start <= r.end
        };
        if !ok {
            return err(
                path.field("range"),
                format!(
                    "start {} is not below end {}: the range is empty",
                    r.start, r.end
                ),
            );
        }
        Test::Range {
            start: r.start as f64,
            end: r.end as f64,
            exclusive: r.exclusive,
        }
    } else if let Some(r) = &c.range_from {
        if r.list.trim().is_empty() || r.key.is_empty() {
            return err(path.field("range_from"), "needs a `list` and a `key`");
        }
        let list = register_list(lists, &r.list);
        Test::RangeFrom {
            list,
            key: r.key.clone(),
            start: r.start.clone(),
            end: r.end.clone(),
            exclusive: r.exclusive,
        }
    } else if let Some(ids) = &c.ids {
        Test::Ids(ids.iter().copied().collect())
    } else if let Some(suffixes) = &c.suffix {
        for (i, s) in suffixes.iter().enumerate() {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return err(
                    path.field("suffix").index(i),
                    format!("`{s}` is not a string of digits"),
                );
            }
        }
        Test::Suffix(suffixes.clone())
    } else if let Some(m) = &c.modulo {
        if m.divisor == 0 {
            return err(path.field("modulo").field("divisor"), "must be at least 1");
        }
        if let Some(r) = m.remainders.iter().find(|r| **r >= m.divisor) {
            return err(
                path.field("modulo").field("remainders"),
                format!("remainder {r} is not below divisor {}", m.divisor),
            );
        }
        Test::Modulo {
            divisor: m.divisor,
            remainders: m.remainders.iter().copied().collect(),
        }
    } else if let Some(p) = c.percent {
        let salt = c.salt.as_deref().unwrap_or(rule);
        Test::Percent {
            threshold: percent_to_buckets(&path.field("percent"), p)?,
            seed: seed_of(salt),
        }
    } else if let Some(p) = c.present {
        Test::Present(p)
    } else {
        unreachable!("exactly one test is set")
    };
    Ok(Cond::Test {
        slot: slot_of(sources, &source),
        source,
        lookup,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::path::Segment;

    const UPSTREAMS: &[&str] = &["prod", "gray"];

    const RULE: &str = "[[services.rules]]\nname = \"r\"\nversion = \"v2\"\n";

    fn compile_err(toml_text: &str) -> CompileError {
        let doc: PolicyDoc = toml::from_str(toml_text).expect("policy parses");
        compile(&doc, UPSTREAMS).expect_err("policy must be rejected")
    }

    #[test]
    fn every_mistake_is_named_with_its_path() {
        let cases: &[(&str, &str)] = &[
            ("[[routes]]\nservice = \"nope\"", "routes[1].service: unknown service `nope`"),
            ("versions = { v1 = \"prod\", v2 = \"elsewhere\" }", "services[0].versions.v2: unknown upstream `elsewhere`"),
            (&format!("{RULE}when = {{ cidr = [\"10.0.0/8\"] }}"), "services[0].rules[0].when.cidr[0]: `10.0.0/8`"),
            (&format!("{RULE}when = {{ header = \"a\", regex = \"(\" }}"), "services[0].rules[0].when.regex: invalid regex"),
            (&format!("{RULE}when = {{ header = \"a\", equals = \"1\", in = [\"2\"] }}"), "has 2 tests (equals, in)"),
            (&format!("{RULE}when = {{ header = \"a\" }}"), "needs one test"),
            (&format!("{RULE}when = {{ equals = \"1\" }}"), "needs exactly one of `header`"),
            (&format!("{RULE}when = {{ header = \"a\", range = {{ start = 9, end = 1 }} }}"), "the range is empty"),
            (&format!("{RULE}when = {{ header = \"a\", percent = 120.0 }}"), "120 is not a percentage"),
            (&format!("{RULE}when = {{ header = \"a\", modulo = {{ divisor = 10, remainders = [10] }} }}"), "remainder 10 is not below divisor 10"),
            ("[[services.rules]]\nname = \"r\"\nversion = \"v9\"\nwhen = { header = \"a\", present = true }", "services[0].rules[0].version: unknown version `v9`"),
            ("[services.split]\nweights = { v2 = 101.0 }", "services[0].split.weights.v2: 101 is not a percentage"),
            ("[services.split]\nweights = { v1 = 10 }", "the stable version gets what the other weights leave"),
            ("override = { version = \"v2\" }", "services[0].override: needs exactly one of `header` or `cookie`"),
            (&format!("{RULE}when = {{ header = \"a\", lookup = {{ list = \"l\", key = \"TOKEN\" }}, present = true }}"), "has no `{}`"),
            (&format!("{RULE}when = {{ all = [] }}"), "services[0].rules[0].when.all: needs at least one condition"),
        ];
        for (extra, want) in cases {
            let text = format!(
                "[[routes]]\nservice = \"web\"\n[[services]]\nname = \"web\"\nstable = \"v1\"\n{}{extra}",
                if extra.starts_with("versions") { "" } else { "versions = { v1 = \"prod\", v2 = \"gray\" }\n" }
            );
            let got = compile_err(&text).to_string();
            assert!(
                got.contains(want),
                "for {extra:?}\n want {want:?}\n got  {got:?}"
            );
        }
        let dup = compile_err("[[services]]\nname = \"a\"\nstable = \"v\"\nversions = { v = \"prod\" }\n[[services]]\nname = \"a\"\nstable = \"v\"\nversions = { v = \"prod\" }");
        let dup = dup.to_string();
        assert!(
            dup.contains("services[1].name: service `a` is defined twice"),
            "{dup}"
        );
    }

    /// Once accepted: a CR LF in a name went out in the `X-Gray-Version` response header.
    #[test]
    fn names_hold_only_token_characters() {
        let text = |service: &str, version: &str, rule: &str| {
            format!(
                "[[services]]\nname = {service:?}\nstable = \"v1\"\nversions = {{ v1 = \"prod\", {version:?} = \"gray\" }}\n\
                 [[services.rules]]\nname = {rule:?}\nversion = \"v1\"\nwhen = {{ header = \"a\", present = true }}\n"
            )
        };
        let doc: PolicyDoc = toml::from_str(&text("web", "v2.canary~1", "beta_users!")).unwrap();
        compile(&doc, UPSTREAMS).unwrap();
        let tokens = "(letters, digits and !#$%&'*+-.^_`|~)";
        let cases = [
            (
                text("web", "v\r\nX-Injected: 1", "r"),
                format!(
                    r#"services[0].versions: version name "v\r\nX-Injected: 1" may hold only token characters {tokens}"#
                ),
            ),
            (
                text("web\n", "v2", "r"),
                format!(
                    r#"services[0].name: service name "web\n" may hold only token characters {tokens}"#
                ),
            ),
            (
                text("web", "v2", "beta users"),
                format!(
                    r#"services[0].rules[0].name: rule name "beta users" may hold only token characters {tokens}"#
                ),
            ),
            (
                text("web", "v\"2", "r"),
                format!(
                    r#"services[0].versions: version name "v\"2" may hold only token characters {tokens}"#
                ),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(compile_err(&text).to_string(), want);
        }
    }

    #[test]
    fn an_empty_upstream_name_is_a_slot_no_policy_can_name() {
        let text = |upstream: &str| {
            format!("[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"{upstream}\" }}\n")
        };
        // `gray` at index 2, after a retired slot: the index is the table's.
        let names = ["prod", "", "gray"];
        let doc: PolicyDoc = toml::from_str(&text("gray")).unwrap();
        let policy = compile(&doc, &names).unwrap();
        assert_eq!(policy.services[0].versions[0].upstream, 2);
        let doc: PolicyDoc = toml::from_str(&text("")).unwrap();
        let e = compile(&doc, &names).unwrap_err();
        assert_eq!(
            e.to_string(),
            "services[0].versions.v1: unknown upstream `` (configured upstreams: prod, gray)"
        );
    }

    #[test]
    fn the_path_is_typed_and_apart_from_the_message() {
        let e = compile_err(&format!(
            "[[routes]]\nservice = \"web\"\n[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"prod\", v2 = \"gray\" }}\n{RULE}when = {{ any = [ {{ header = \"a\", equals = \"1\" }}, {{ cidr = [\"10.0.0.0/8\", \"10.0.0/8\"] }} ] }}"
        ));
        assert_eq!(
            e.path,
            FieldPath::new("services")
                .index(0)
                .field("rules")
                .index(0)
                .field("when")
                .field("any")
                .index(1)
                .field("cidr")
                .index(1)
        );
        assert_eq!(e.path.segments()[0], Segment::Field("services".into()));
        assert!(!e.message.contains("services["), "{}", e.message);
        assert_eq!(
            e.to_string(),
            format!("services[0].rules[0].when.any[1].cidr[1]: {}", e.message)
        );
    }
}
