//! Request facts -> decision. The hot path: no allocation unless a rule looks a value up in a
//! store (the key is built then), reads the client IP as text, or the service reads more than
//! [`INLINE_SLOTS`] distinct sources.
//!
//! Each source (a header, a cookie, a query parameter, the client IP) is read from the request at
//! most once per evaluation, and parsed as a number at most once, however many rules test it. The
//! rule indexes (see `index`) give the first indexed rule that matches; only the linear rules
//! before it are evaluated, in order.

use super::compile::{seed_of, Policy, RouteEntry, Service, BUCKETS};
use super::compiled::{Cond, Lookup, Source, Test};
use super::index::{SourceIndex, NONE};
use super::{Decision, LookupAnswer, Lookups, OverrideValue, Reason, RequestFacts};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    Decided(Decision),
    /// No route serves this host and path.
    NoRoute,
    /// A rule needs a store value the caller has not supplied: fetch `key` from `list`, make it
    /// known to the [`Lookups`], and evaluate again.
    NeedLookup {
        list: Arc<str>,
        key: String,
    },
}

/// The bucket (0..10000) of an identity under a salt: the same on every instance and after a
/// restart, since it depends only on the two strings (xxh3, a fixed, documented hash).
pub fn bucket_of(salt: &str, identity: &str) -> u32 {
    bucket_seeded(seed_of(salt), identity)
}

fn bucket_seeded(seed: u64, identity: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(identity.as_bytes(), seed) % u64::from(BUCKETS)) as u32
}

/// Why a condition could not be decided.
enum Stop {
    Need(Arc<str>, String),
}

/// Sources whose values an evaluation keeps on the stack; a service reading more allocates.
const INLINE_SLOTS: usize = 16;

/// What one evaluation has read of one source so far. `None`: not read yet.
struct Slot<'a> {
    raw: Option<Option<Cow<'a, str>>>,
    number: Option<Option<f64>>,
    integer: Option<Option<i64>>,
}

impl Slot<'_> {
    const EMPTY: Self = Slot {
        raw: None,
        number: None,
        integer: None,
    };
}

/// The sources of a service as one request gives them, read and parsed on first use.
struct Memo<'m, 'a> {
    facts: &'m RequestFacts<'a>,
    sources: &'m [Source],
    slots: &'m mut [Slot<'a>],
}

impl<'a> Memo<'_, 'a> {
    /// The raw value of the source in slot `i`, if the request has it.
    #[inline]
    fn raw(&mut self, i: usize) -> Option<&str> {
        let slot = &mut self.slots[i];
        slot.raw
            .get_or_insert_with(|| source_value(&self.sources[i], self.facts))
            .as_deref()
    }

    /// The value as a number ([`parse_number`]).
    #[inline]
    fn number(&mut self, i: usize) -> Option<f64> {
        if let Some(n) = self.slots[i].number {
            return n;
        }
        let n = self.raw(i).and_then(parse_number);
        self.slots[i].number = Some(n);
        n
    }

    /// The value as an integer ([`parse_integer`]).
    #[inline]
    fn integer(&mut self, i: usize) -> Option<i64> {
        if let Some(n) = self.slots[i].integer {
            return n;
        }
        let n = self.raw(i).and_then(parse_integer);
        self.slots[i].integer = Some(n);
        n
    }
}

impl Policy {
    /// Decides which version answers a request.
    pub fn evaluate(&self, facts: &RequestFacts<'_>, lookups: &dyn Lookups) -> Evaluation {
        let Some(route) = self.find_route(facts.host, facts.path) else {
            return Evaluation::NoRoute;
        };
        let service = &self.services[route.service];
        let decide = |version: usize, reason: Reason| {
            let v = &service.versions[version];
            let stable = &service.versions[service.stable];
            Evaluation::Decided(Decision {
                route: route.name.clone(),
                service: service.name.clone(),
                version: v.name.clone(),
                upstream: v.upstream,
                stable_version: stable.name.clone(),
                stable_upstream: stable.upstream,
                reason,
            })
        };

        let mut inline = [Slot::EMPTY; INLINE_SLOTS];
        let mut heap = Vec::new();
        let count = service.sources.len();
        let slots = if count <= INLINE_SLOTS {
            &mut inline[..count]
        } else {
            heap.extend((0..count).map(|_| Slot::EMPTY));
            &mut heap[..]
        };
        let mut memo = Memo {
            facts,
            sources: &service.sources,
            slots,
        };

        if let Some(o) = &service.override_ {
            if let Some(value) = memo.raw(o.slot) {
                let value = value.trim();
                if value.eq_ignore_ascii_case("always") {
                    return decide(
                        o.version,
                        Reason::Override {
                            value: OverrideValue::Always,
                        },
                    );
                }
                if value.eq_ignore_ascii_case("never") {
                    return decide(
                        service.stable,
                        Reason::Override {
                            value: OverrideValue::Never,
                        },
                    );
                }
            }
        }

        match first_rule(service, &mut memo, lookups) {
            Err(Stop::Need(list, key)) => return Evaluation::NeedLookup { list, key },
            Ok(Some(i)) => {
                let rule = &service.rules[i];
                return decide(
                    rule.version,
                    Reason::Rule {
                        name: rule.name.clone(),
                    },
                );
            }
            Ok(None) => {}
        }

        if let Some(split) = &service.split {
            let (bucket, sticky) = match &split.by {
                None => ((facts.random % u64::from(BUCKETS)) as u32, false),
                Some(slot) => match memo.raw(*slot) {
                    Some(id) => (bucket_seeded(split.seed, id), true),
                    // No identity to stick to: stable, so that the version never flips for it.
                    None => return decide(service.stable, Reason::Default),
                },
            };
            let version = split
                .bounds
                .iter()
                .find(|(upper, _)| bucket < *upper)
                .map_or(service.stable, |(_, v)| *v);
            return decide(version, Reason::Split { bucket, sticky });
        }
        decide(service.stable, Reason::Default)
    }

    fn find_route(&self, host: &str, path: &str) -> Option<&RouteEntry> {
        let host = strip_port(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let t = &self.routes;
        if let Some(found) = t.exact.get(host).and_then(|r| match_prefix(r, path)) {
            return Some(found);
        }
        for (suffix, routes) in &t.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(found) = match_prefix(routes, path) {
                    return Some(found);
                }
            }
        }
        match_prefix(&t.any, path)
    }

    /// The service a route name leads to, for tools that list the policy.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s: &Service| &*s.name)
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn match_prefix<'r>(routes: &'r [RouteEntry], path: &str) -> Option<&'r RouteEntry> {
    routes.iter().find(|r| {
        r.prefix.is_empty()
            || (path.starts_with(r.prefix.as_str())
                && matches!(
                    path.as_bytes().get(r.prefix.len()),
                    None | Some(b'/') | Some(b'?')
                ))
    })
}

/// The index of the first rule that matches (first match wins), or a store value it needs.
///
/// The indexes answer the lowest indexed rule that matches; then the linear rules below it are
/// evaluated in order, exactly as a walk over all rules would reach them: a linear rule that
/// needs an unknown store value stops the evaluation only when every rule before it failed.
fn first_rule(
    service: &Service,
    memo: &mut Memo<'_, '_>,
    lookups: &dyn Lookups,
) -> Result<Option<usize>, Stop> {
    let index = &service.index;
    let mut best = NONE;
    for source in &index.sources {
        // By ascending `first`: every later source's rules come after a match already found.
        if source.first >= best {
            break;
        }
        best = best.min(lowest_indexed(source, memo));
    }
    for &i in &index.linear {
        if i >= best {
            break;
        }
        let rule = &service.rules[i as usize];
        let mut unavailable = false;
        // A rule that depended on a store that could not answer does not match: fail safe.
        if eval_cond(&rule.cond, memo, lookups, &mut unavailable)? && !unavailable {
            return Ok(Some(i as usize));
        }
    }
    Ok((best != NONE).then_some(best as usize))
}

/// The lowest indexed rule that matches on one source ([`NONE`] if none does).
#[inline]
fn lowest_indexed(index: &SourceIndex, memo: &mut Memo<'_, '_>) -> u32 {
    let mut best = NONE;
    if index.client_ip && !index.nets.is_empty() {
        // The client IP is tested as an address, without formatting it.
        best = index.nets.lowest(memo.facts.client_ip).unwrap_or(NONE);
        if index.strings.is_empty() && index.ids.is_empty() && index.ranges.is_empty() {
            return best;
        }
    }
    let Some(raw) = memo.raw(index.slot) else {
        return best;
    };
    if let Some(&rule) = index.strings.get(raw) {
        best = best.min(rule);
    }
    if !index.client_ip && !index.nets.is_empty() {
        if let Some(rule) = raw
            .trim()
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| index.nets.lowest(ip))
        {
            best = best.min(rule);
        }
    }
    if !index.ids.is_empty() {
        if let Some(&rule) = memo.integer(index.slot).and_then(|n| index.ids.get(&n)) {
            best = best.min(rule);
        }
    }
    if !index.ranges.is_empty() {
        if let Some(n) = memo.number(index.slot) {
            best = best.min(index.ranges.lowest(n));
        }
    }
    best
}

fn eval_cond(
    cond: &Cond,
    memo: &mut Memo<'_, '_>,
    lookups: &dyn Lookups,
    unavailable: &mut bool,
) -> Result<bool, Stop> {
    match cond {
        Cond::All(items) => {
            for c in items {
                if !eval_cond(c, memo, lookups, unavailable)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Cond::Any(items) => {
            for c in items {
                if eval_cond(c, memo, lookups, unavailable)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Cond::Not(inner) => Ok(!eval_cond(inner, memo, lookups, unavailable)?),
        Cond::Test {
            source,
            slot,
            lookup: None,
            test,
        } => {
            let slot = *slot;
            // An absent source fails every test but `present = false`; the number parsers answer
            // `None` for it.
            Ok(match test {
                // The client IP is tested as an address, without formatting it.
                Test::Cidr(table) if matches!(source, Source::ClientIp) => {
                    table.contains(memo.facts.client_ip)
                }
                Test::Range {
                    start,
                    end,
                    exclusive,
                } => memo
                    .number(slot)
                    .is_some_and(|n| in_range(*start, *end, *exclusive, n)),
                Test::Ids(_) | Test::Suffix(_) | Test::Modulo { .. } => {
                    memo.integer(slot).is_some_and(|n| integer_test(test, n))
                }
                Test::Present(p) => memo.raw(slot).is_some() == *p,
                Test::RangeFrom { .. } => match memo.raw(slot) {
                    None => false,
                    Some(v) => return range_from(test, v, lookups, unavailable),
                },
                _ => memo.raw(slot).is_some_and(|v| run_test(test, v)),
            })
        }
        Cond::Test {
            slot,
            lookup: Some(l),
            test,
            ..
        } => {
            let Some(raw) = memo.raw(*slot) else {
                return Ok(matches!(test, Test::Present(false)));
            };
            let value: Option<Arc<str>> = match lookup_value(l, raw, lookups) {
                LookupAnswer::Value(v) => Some(v),
                LookupAnswer::Absent => None,
                LookupAnswer::Unavailable => {
                    *unavailable = true;
                    None
                }
                LookupAnswer::Unknown => return Err(Stop::Need(l.list.clone(), key_of(l, raw))),
            };
            let Some(v) = value else {
                return Ok(matches!(test, Test::Present(false)));
            };
            if let Test::RangeFrom { .. } = test {
                return range_from(test, &v, lookups, unavailable);
            }
            Ok(run_test(test, &v))
        }
    }
}

/// A `range_from` test of a present value: the range is itself a store value.
fn range_from(
    test: &Test,
    value: &str,
    lookups: &dyn Lookups,
    unavailable: &mut bool,
) -> Result<bool, Stop> {
    let Test::RangeFrom {
        list,
        key,
        start,
        end,
        exclusive,
    } = test
    else {
        unreachable!("called for range_from tests only")
    };
    match lookups.get(list, key) {
        LookupAnswer::Value(doc) => Ok(in_stored_range(&doc, start, end, *exclusive, value)),
        LookupAnswer::Absent => Ok(false),
        LookupAnswer::Unavailable => {
            *unavailable = true;
            Ok(false)
        }
        LookupAnswer::Unknown => Err(Stop::Need(list.clone(), key.clone())),
    }
}

fn key_of(l: &Lookup, value: &str) -> String {
    let mut key = String::with_capacity(l.before.len() + value.len() + l.after.len());
    key.push_str(&l.before);
    key.push_str(value);
    key.push_str(&l.after);
    key
}

fn lookup_value(l: &Lookup, value: &str, lookups: &dyn Lookups) -> LookupAnswer {
    if l.before.is_empty() && l.after.is_empty() {
        lookups.get(&l.list, value)
    } else {
        lookups.get(&l.list, &key_of(l, value))
    }
}

fn run_test(test: &Test, value: &str) -> bool {
    match test {
        Test::Equals(want) => value == want,
        Test::In(set) => set.contains(value),
        Test::Regex(re) => re.is_match(value),
        Test::Cidr(table) => value
            .trim()
            .parse::<IpAddr>()
            .is_ok_and(|ip| table.contains(ip)),
        Test::Range {
            start,
            end,
            exclusive,
        } => parse_number(value).is_some_and(|n| in_range(*start, *end, *exclusive, n)),
        Test::RangeFrom { .. } => unreachable!("needs a lookup: handled in eval_cond"),
        Test::Ids(_) | Test::Suffix(_) | Test::Modulo { .. } => {
            parse_integer(value).is_some_and(|n| integer_test(test, n))
        }
        Test::Percent { threshold, seed } => bucket_seeded(*seed, value) < *threshold,
        Test::Present(p) => *p,
    }
}

fn in_range(start: f64, end: f64, exclusive: bool, n: f64) -> bool {
    if exclusive {
        start < n && n < end
    } else {
        start <= n && n <= end
    }
}

/// `ids`, `suffix` and `modulo` of an integer value.
fn integer_test(test: &Test, n: i64) -> bool {
    match test {
        Test::Ids(set) => set.contains(&n),
        Test::Suffix(suffixes) => {
            // The decimal digits of |n|, without allocating.
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut rest = n.unsigned_abs();
            loop {
                at -= 1;
                digits[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
            let text = &digits[at..];
            suffixes.iter().any(|s| text.ends_with(s.as_bytes()))
        }
        Test::Modulo {
            divisor,
            remainders,
        } => {
            // In i128: `i64::MIN.rem_euclid(-1)` (a divisor above `i64::MAX`) would overflow.
            let r = i128::from(n).rem_euclid(i128::from(*divisor));
            remainders.contains(&(r as u64))
        }
        _ => unreachable!("not an integer test"),
    }
}

/// Whether `value` lies in the range stored as JSON `doc` (`{"idStart":1,"idEnd":5000}`), bounds
/// being numbers or numeric strings as the original's `tonumber` reads them. Bad JSON or bounds
/// match nothing.
fn in_stored_range(doc: &str, start: &str, end: &str, exclusive: bool, value: &str) -> bool {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(doc)
    else {
        return false;
    };
    let bound = |name: &str| match fields.get(name)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => parse_number(s),
        _ => None,
    };
    let (Some(lo), Some(hi), Some(n)) = (bound(start), bound(end), parse_number(value)) else {
        return false;
    };
    if exclusive {
        lo < n && n < hi
    } else {
        lo <= n && n <= hi
    }
}

/// A number as Lua's `tonumber` reads it (the original designs compare with it): surrounding
/// white space allowed, decimal with optional fraction and exponent, or `0x` hexadecimal.
pub(crate) fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let n = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()? as f64
    } else {
        // Rust's float syntax also takes "inf" and "nan", which tonumber does not.
        if !body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    n.is_finite().then_some(if neg { -n } else { n })
}

/// An integer identity: a number as [`parse_number`] reads it, with no fraction.
fn parse_integer(text: &str) -> Option<i64> {
    if let Ok(n) = text.trim().parse::<i64>() {
        return Some(n);
    }
    let n = parse_number(text)?;
    (n.fract() == 0.0 && n.abs() < 9.0e15).then_some(n as i64)
}

/// The raw value a source names in the request, if present.
fn source_value<'a>(source: &Source, facts: &RequestFacts<'a>) -> Option<Cow<'a, str>> {
    match source {
        Source::Header(name) => facts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed),
        Source::Cookie(name) => cookie(facts.headers, name).map(Cow::Borrowed),
        Source::Query(name) => query_param(facts.query?, name),
        Source::ClientIp => Some(Cow::Owned(facts.client_ip.to_string())),
    }
}

fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.contains(['%', '+']) {
        return Cow::Borrowed(v);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The evaluator before rule indexes and source memoization, kept as the reference the indexed
/// evaluation must agree with exactly.
#[cfg(test)]
pub(super) mod reference {
    use super::super::compile::{Policy, BUCKETS};
    use super::super::compiled::{Cond, Source, Test};
    use super::super::{Decision, LookupAnswer, Lookups, OverrideValue, Reason, RequestFacts};
    use super::{
        bucket_seeded, in_stored_range, key_of, lookup_value, parse_integer, parse_number,
        source_value, Evaluation, Stop,
    };
    use std::borrow::Cow;
    use std::net::IpAddr;

    impl Policy {
        /// [`Policy::evaluate`] as it was before rule indexes: every rule in order, every source read
        /// again by every test.
        pub(in crate::policy) fn evaluate_linear(
            &self,
            facts: &RequestFacts<'_>,
            lookups: &dyn Lookups,
        ) -> Evaluation {
            let Some(route) = self.find_route(facts.host, facts.path) else {
                return Evaluation::NoRoute;
            };
            let service = &self.services[route.service];
            let decide = |version: usize, reason: Reason| {
                let v = &service.versions[version];
                let stable = &service.versions[service.stable];
                Evaluation::Decided(Decision {
                    route: route.name.clone(),
                    service: service.name.clone(),
                    version: v.name.clone(),
                    upstream: v.upstream,
                    stable_version: stable.name.clone(),
                    stable_upstream: stable.upstream,
                    reason,
                })
            };

            if let Some(o) = &service.override_ {
                if let Some(value) = source_value(&service.sources[o.slot], facts) {
                    let value = value.trim();
                    if value.eq_ignore_ascii_case("always") {
                        return decide(
                            o.version,
                            Reason::Override {
                                value: OverrideValue::Always,
                            },
                        );
                    }
                    if value.eq_ignore_ascii_case("never") {
                        return decide(
                            service.stable,
                            Reason::Override {
                                value: OverrideValue::Never,
                            },
                        );
                    }
                }
            }

            for rule in &service.rules {
                let mut unavailable = false;
                match eval_cond(&rule.cond, facts, lookups, &mut unavailable) {
                    Err(Stop::Need(list, key)) => return Evaluation::NeedLookup { list, key },
                    // A rule that depended on a store that could not answer does not match: fail safe.
                    Ok(true) if !unavailable => {
                        return decide(
                            rule.version,
                            Reason::Rule {
                                name: rule.name.clone(),
                            },
                        )
                    }
                    Ok(_) => {}
                }
            }

            if let Some(split) = &service.split {
                let (bucket, sticky) = match &split.by {
                    None => ((facts.random % u64::from(BUCKETS)) as u32, false),
                    Some(slot) => match source_value(&service.sources[*slot], facts) {
                        Some(id) => (bucket_seeded(split.seed, &id), true),
                        // No identity to stick to: stable, so that the version never flips for it.
                        None => return decide(service.stable, Reason::Default),
                    },
                };
                let version = split
                    .bounds
                    .iter()
                    .find(|(upper, _)| bucket < *upper)
                    .map_or(service.stable, |(_, v)| *v);
                return decide(version, Reason::Split { bucket, sticky });
            }
            decide(service.stable, Reason::Default)
        }
    }

    fn eval_cond(
        cond: &Cond,
        facts: &RequestFacts<'_>,
        lookups: &dyn Lookups,
        unavailable: &mut bool,
    ) -> Result<bool, Stop> {
        match cond {
            Cond::All(items) => {
                for c in items {
                    if !eval_cond(c, facts, lookups, unavailable)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Cond::Any(items) => {
                for c in items {
                    if eval_cond(c, facts, lookups, unavailable)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Cond::Not(inner) => Ok(!eval_cond(inner, facts, lookups, unavailable)?),
            Cond::Test {
                source,
                lookup,
                test,
                ..
            } => {
                // The client IP is tested as an address, without formatting it, when nothing maps it.
                if let (Source::ClientIp, None, Test::Cidr(table)) = (source, lookup, test) {
                    return Ok(table.contains(facts.client_ip));
                }
                let Some(raw) = source_value(source, facts) else {
                    return Ok(matches!(test, Test::Present(false)));
                };
                let value: Option<Cow<'_, str>> = match lookup {
                    None => Some(raw),
                    Some(l) => match lookup_value(l, &raw, lookups) {
                        LookupAnswer::Value(v) => Some(Cow::Owned(v.to_string())),
                        LookupAnswer::Absent => None,
                        LookupAnswer::Unavailable => {
                            *unavailable = true;
                            None
                        }
                        LookupAnswer::Unknown => {
                            return Err(Stop::Need(l.list.clone(), key_of(l, &raw)))
                        }
                    },
                };
                let Some(v) = value else {
                    return Ok(matches!(test, Test::Present(false)));
                };
                if let Test::RangeFrom {
                    list,
                    key,
                    start,
                    end,
                    exclusive,
                } = test
                {
                    return match lookups.get(list, key) {
                        LookupAnswer::Value(doc) => {
                            Ok(in_stored_range(&doc, start, end, *exclusive, &v))
                        }
                        LookupAnswer::Absent => Ok(false),
                        LookupAnswer::Unavailable => {
                            *unavailable = true;
                            Ok(false)
                        }
                        LookupAnswer::Unknown => Err(Stop::Need(list.clone(), key.clone())),
                    };
                }
                Ok(run_test(test, &v))
            }
        }
    }

    fn run_test(test: &Test, value: &str) -> bool {
        match test {
            Test::Equals(want) => value == want,
            Test::In(set) => set.contains(value),
            Test::Regex(re) => re.is_match(value),
            Test::Cidr(table) => value
                .trim()
                .parse::<IpAddr>()
                .is_ok_and(|ip| table.contains(ip)),
            Test::Range {
                start,
                end,
                exclusive,
            } => parse_number(value).is_some_and(|n| {
                if *exclusive {
                    *start < n && n < *end
                } else {
                    *start <= n && n <= *end
                }
            }),
            Test::RangeFrom { .. } => unreachable!("handled in eval_cond"),
            Test::Ids(set) => parse_integer(value).is_some_and(|n| set.contains(&n)),
            Test::Suffix(suffixes) => parse_integer(value).is_some_and(|n| {
                let text = n.unsigned_abs().to_string();
                suffixes.iter().any(|s| text.ends_with(s.as_str()))
            }),
            Test::Modulo {
                divisor,
                remainders,
            } => parse_integer(value).is_some_and(|n| {
                remainders.contains(&(i128::from(n).rem_euclid(i128::from(*divisor)) as u64))
            }),
            Test::Percent { threshold, seed } => bucket_seeded(*seed, value) < *threshold,
            Test::Present(p) => *p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{compile, model::PolicyDoc, NoLookups};
    use super::*;
    use http::HeaderMap;
    use std::collections::HashMap;

    const UPSTREAMS: &[&str] = &["prod", "gray"];

    fn policy(toml_text: &str) -> Policy {
        let doc: PolicyDoc = toml::from_str(toml_text).expect("policy parses");
        compile(&doc, UPSTREAMS).expect("policy compiles")
    }

    fn compile_err(toml_text: &str) -> String {
        let doc: PolicyDoc = toml::from_str(toml_text).expect("policy parses");
        compile(&doc, UPSTREAMS)
            .expect_err("policy must be rejected")
            .to_string()
    }

    /// A service `web` (stable `v1` on prod, `v2` on gray) with the given extra TOML.
    fn web(extra: &str) -> Policy {
        policy(&format!(
            "[[routes]]\nservice = \"web\"\n[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"prod\", v2 = \"gray\" }}\n{extra}"
        ))
    }

    struct Req {
        host: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        ip: IpAddr,
        headers: HeaderMap,
        random: u64,
    }

    fn req() -> Req {
        Req {
            host: "example.com",
            path: "/",
            query: None,
            ip: "192.0.2.1".parse().unwrap(),
            headers: HeaderMap::new(),
            random: 0,
        }
    }

    impl Req {
        fn header(mut self, k: &'static str, v: &str) -> Self {
            self.headers.append(k, v.parse().unwrap());
            self
        }
        fn ip(mut self, ip: &str) -> Self {
            self.ip = ip.parse().unwrap();
            self
        }
        fn facts(&self) -> RequestFacts<'_> {
            RequestFacts {
                host: self.host,
                path: self.path,
                query: self.query,
                client_ip: self.ip,
                headers: &self.headers,
                random: self.random,
            }
        }
    }

    fn version(p: &Policy, r: &Req) -> String {
        match p.evaluate(&r.facts(), &NoLookups) {
            Evaluation::Decided(d) => d.version.to_string(),
            other => panic!("not decided: {other:?}"),
        }
    }

    fn decision(p: &Policy, r: &Req, l: &dyn Lookups) -> Decision {
        match p.evaluate(&r.facts(), l) {
            Evaluation::Decided(d) => d,
            other => panic!("not decided: {other:?}"),
        }
    }

    const RULE: &str = "[[services.rules]]\nname = \"r\"\nversion = \"v2\"\n";

    #[test]
    fn stable_when_nothing_matches() {
        let p = web("");
        let d = decision(&p, &req(), &NoLookups);
        assert_eq!(
            (&*d.version, d.upstream, d.reason.clone()),
            ("v1", 0, Reason::Default)
        );
        assert!(d.is_stable());
    }

    #[test]
    fn client_ip_cidr() {
        let p = web(&format!(
            "{RULE}when = {{ cidr = [\"10.0.0.0/8\", \"192.0.2.9\"] }}"
        ));
        assert_eq!(version(&p, &req().ip("10.1.2.3")), "v2");
        assert_eq!(version(&p, &req().ip("192.0.2.9")), "v2");
        assert_eq!(version(&p, &req().ip("192.0.2.8")), "v1");
        let d = decision(&p, &req().ip("10.0.0.1"), &NoLookups);
        assert_eq!(d.reason, Reason::Rule { name: "r".into() });
        assert_eq!(d.upstream, 1);
        assert_eq!(d.stable_upstream, 0);
    }

    #[test]
    fn header_equals_in_and_regex() {
        let p = web(&format!(
            "{RULE}when = {{ header = \"X-Env\", equals = \"beta\" }}"
        ));
        assert_eq!(version(&p, &req().header("x-env", "beta")), "v2");
        assert_eq!(version(&p, &req().header("x-env", "prod")), "v1");
        assert_eq!(version(&p, &req()), "v1");

        let p = web(&format!(
            "{RULE}when = {{ header = \"X-Env\", in = [\"a\", \"b\"] }}"
        ));
        assert_eq!(version(&p, &req().header("x-env", "b")), "v2");
        assert_eq!(version(&p, &req().header("x-env", "c")), "v1");

        let p = web(&format!(
            "{RULE}when = {{ header = \"User-Agent\", regex = \"(?i)iphone\" }}"
        ));
        assert_eq!(
            version(&p, &req().header("user-agent", "Mozilla (iPhone)")),
            "v2"
        );
        assert_eq!(
            version(&p, &req().header("user-agent", "Mozilla (X11)")),
            "v1"
        );
    }

    #[test]
    fn cookie_and_query_sources() {
        let p = web(&format!(
            "{RULE}when = {{ cookie = \"group\", equals = \"beta\" }}"
        ));
        assert_eq!(
            version(&p, &req().header("cookie", "a=1; group=beta; z=2")),
            "v2"
        );
        assert_eq!(
            version(&p, &req().header("cookie", "a=1; mygroup=beta")),
            "v1"
        );

        let p = web(&format!(
            "{RULE}when = {{ query = \"ab\", equals = \"new ui\" }}"
        ));
        let mut r = req();
        r.query = Some("x=1&ab=new%20ui");
        assert_eq!(version(&p, &r), "v2");
        r.query = Some("x=1&ab=old");
        assert_eq!(version(&p, &r), "v1");
    }

    #[test]
    fn numeric_identity_range_set_suffix_modulo() {
        let p = web(&format!(
            "{RULE}when = {{ header = \"X-Uid\", range = {{ start = 1, end = 5000 }} }}"
        ));
        assert_eq!(version(&p, &req().header("x-uid", "1")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "5000")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "5001")), "v1");
        assert_eq!(version(&p, &req().header("x-uid", "abc")), "v1");

        let p = web(&format!("{RULE}when = {{ header = \"X-Uid\", range = {{ start = 1, end = 5000, exclusive = true }} }}"));
        assert_eq!(version(&p, &req().header("x-uid", "1")), "v1");
        assert_eq!(version(&p, &req().header("x-uid", "2")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "4999")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "5000")), "v1");

        let p = web(&format!(
            "{RULE}when = {{ header = \"X-Uid\", ids = [7, 42] }}"
        ));
        assert_eq!(version(&p, &req().header("x-uid", "42")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "43")), "v1");

        let p = web(&format!(
            "{RULE}when = {{ header = \"X-Uid\", suffix = [\"7\", \"00\"] }}"
        ));
        assert_eq!(version(&p, &req().header("x-uid", "1237")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "1200")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "1201")), "v1");

        let p = web(&format!(
            "{RULE}when = {{ cookie = \"uid\", modulo = {{ divisor = 10, remainders = [0, 1] }} }}"
        ));
        assert_eq!(version(&p, &req().header("cookie", "uid=31")), "v2");
        assert_eq!(version(&p, &req().header("cookie", "uid=32")), "v1");
    }

    #[test]
    fn numbers_read_as_lua_tonumber() {
        assert_eq!(parse_number(" 12 "), Some(12.0));
        assert_eq!(parse_number("1e3"), Some(1000.0));
        assert_eq!(parse_number("0x10"), Some(16.0));
        assert_eq!(parse_number("-2.5"), Some(-2.5));
        assert_eq!(parse_number("nan"), None);
        assert_eq!(parse_number("inf"), None);
        assert_eq!(parse_number("12abc"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn percent_is_sticky_and_close_to_its_weight() {
        let p = web(&format!(
            "{RULE}when = {{ header = \"X-Uid\", percent = 10 }}"
        ));
        let mut hits = 0;
        for id in 0..10_000 {
            let r = req().header("x-uid", &id.to_string());
            let first = version(&p, &r);
            assert_eq!(first, version(&p, &r), "same identity, same answer");
            hits += usize::from(first == "v2");
        }
        assert!(
            (850..=1150).contains(&hits),
            "10% of 10000 within 1.5 points, got {hits}"
        );
        let zero = web(&format!(
            "{RULE}when = {{ header = \"X-Uid\", percent = 0 }}"
        ));
        assert!((0..1000).all(|id| version(&zero, &req().header("x-uid", &id.to_string())) == "v1"));
    }

    #[test]
    fn bucket_depends_only_on_salt_and_identity() {
        // Pinned values: a change of hash function would move users between versions.
        assert_eq!(bucket_of("web", "user-1"), bucket_of("web", "user-1"));
        assert_ne!(
            (0..50)
                .map(|i| bucket_of("a", &i.to_string()))
                .collect::<Vec<_>>(),
            (0..50)
                .map(|i| bucket_of("b", &i.to_string()))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            bucket_of("web", "user-1"),
            (xxhash_rust::xxh3::xxh3_64_with_seed(b"user-1", xxhash_rust::xxh3::xxh3_64(b"web"))
                % 10_000) as u32
        );
    }

    #[test]
    fn split_sticky_random_and_missing_identity() {
        let p = web("[services.split]\nweights = { v2 = 30 }\nby = { cookie = \"uid\" }");
        let mut hits = 0;
        for id in 0..10_000 {
            let r = req().header("cookie", &format!("uid={id}"));
            hits += usize::from(version(&p, &r) == "v2");
        }
        assert!((2850..=3150).contains(&hits), "30% split, got {hits}");
        let d = decision(&p, &req(), &NoLookups);
        assert_eq!((&*d.version, d.reason.clone()), ("v1", Reason::Default));

        let p = web("[services.split]\nweights = { v2 = 50 }");
        let mut r = req();
        r.random = 10;
        assert_eq!(
            decision(&p, &r, &NoLookups).reason,
            Reason::Split {
                bucket: 10,
                sticky: false
            }
        );
        assert_eq!(version(&p, &r), "v2");
        r.random = 7000;
        assert_eq!(version(&p, &r), "v1");
    }

    #[test]
    fn raising_a_split_keeps_earlier_canary_users() {
        let at = |w: u32| {
            web(&format!(
                "[services.split]\nweights = {{ v2 = {w} }}\nby = {{ header = \"x-uid\" }}"
            ))
        };
        let (p10, p50) = (at(10), at(50));
        for id in 0..2000 {
            let r = req().header("x-uid", &id.to_string());
            if version(&p10, &r) == "v2" {
                assert_eq!(version(&p50, &r), "v2");
            }
        }
    }

    #[test]
    fn override_forces_and_comes_first() {
        let p = web(&format!(
            "override = {{ header = \"X-Gray\", version = \"v2\" }}\n{RULE}when = {{ cidr = [\"10.0.0.0/8\"] }}"
        ));
        assert_eq!(version(&p, &req().header("x-gray", "always")), "v2");
        assert_eq!(
            version(&p, &req().header("x-gray", "never").ip("10.0.0.1")),
            "v1"
        );
        assert_eq!(
            version(&p, &req().header("x-gray", "maybe").ip("10.0.0.1")),
            "v2"
        );
        assert_eq!(
            decision(&p, &req().header("x-gray", "never"), &NoLookups).reason,
            Reason::Override {
                value: OverrideValue::Never
            }
        );
    }

    #[test]
    fn all_any_not_and_first_match_wins() {
        let p = web(
            "[[services.rules]]\nname = \"first\"\nversion = \"v1\"\nwhen = { header = \"x-pin\", present = true }\n\
             [[services.rules]]\nname = \"second\"\nversion = \"v2\"\n\
             when = { all = [ { cidr = [\"10.0.0.0/8\"] }, { any = [ { header = \"x-a\", equals = \"1\" }, { not = { header = \"x-b\", present = true } } ] } ] }",
        );
        assert_eq!(version(&p, &req().ip("10.0.0.1")), "v2");
        assert_eq!(version(&p, &req().ip("10.0.0.1").header("x-b", "1")), "v1");
        assert_eq!(
            version(
                &p,
                &req().ip("10.0.0.1").header("x-b", "1").header("x-a", "1")
            ),
            "v2"
        );
        assert_eq!(version(&p, &req().ip("11.0.0.1")), "v1");
        let d = decision(&p, &req().ip("10.0.0.1").header("x-pin", "1"), &NoLookups);
        assert_eq!(
            d.reason,
            Reason::Rule {
                name: "first".into()
            }
        );
    }

    struct Map(HashMap<(String, String), LookupAnswer>);
    impl Lookups for Map {
        fn get(&self, list: &str, key: &str) -> LookupAnswer {
            self.0
                .get(&(list.to_string(), key.to_string()))
                .cloned()
                .unwrap_or(LookupAnswer::Unknown)
        }
    }

    #[test]
    fn lookups_are_requested_then_used() {
        let p = web(&format!(
            "{RULE}when = {{ header = \"TOKEN\", lookup = {{ list = \"redis\", key = \"TOKEN_{{}}\" }}, range = {{ start = 1, end = 5000, exclusive = true }} }}"
        ));
        assert_eq!(p.lookup_lists(), &[Arc::<str>::from("redis")]);
        let r = req().header("token", "abc");
        let mut known = Map(HashMap::new());
        assert_eq!(
            p.evaluate(&r.facts(), &known),
            Evaluation::NeedLookup {
                list: "redis".into(),
                key: "TOKEN_abc".into()
            }
        );
        known.0.insert(
            ("redis".into(), "TOKEN_abc".into()),
            LookupAnswer::Value("1234".into()),
        );
        assert_eq!(&*decision(&p, &r, &known).version, "v2");
        known.0.insert(
            ("redis".into(), "TOKEN_abc".into()),
            LookupAnswer::Value("9000".into()),
        );
        assert_eq!(&*decision(&p, &r, &known).version, "v1");
        known
            .0
            .insert(("redis".into(), "TOKEN_abc".into()), LookupAnswer::Absent);
        assert_eq!(&*decision(&p, &r, &known).version, "v1");
        // no header: no lookup at all
        assert_eq!(&*decision(&p, &req(), &known).version, "v1");
    }

    #[test]
    fn the_original_token_and_stored_range_layout() {
        let p = web(&format!(
            "{RULE}when = {{ header = \"TOKEN\", lookup = {{ list = \"redis\", key = \"TOKEN_{{}}\" }}, range_from = {{ list = \"redis\", key = \"Grayscale_Range\", exclusive = true }} }}"
        ));
        let r = req().header("token", "abc");
        let mut known = Map(HashMap::new());
        let set = |known: &mut Map, k: &str, v: Option<&str>| {
            let answer = v.map_or(LookupAnswer::Absent, |v| LookupAnswer::Value(v.into()));
            known.0.insert(("redis".into(), k.into()), answer);
        };
        set(&mut known, "TOKEN_abc", Some("1234"));
        assert_eq!(
            p.evaluate(&r.facts(), &known),
            Evaluation::NeedLookup {
                list: "redis".into(),
                key: "Grayscale_Range".into()
            }
        );
        let cases: &[(Option<&str>, &str)] = &[
            (Some(r#"{"idStart":1,"idEnd":5000}"#), "v2"),
            (Some(r#"{"idStart":"1","idEnd":" 5000 "}"#), "v2"),
            (Some(r#"{"idStart":1234,"idEnd":5000}"#), "v1"),
            (Some(r#"{"idStart":1,"idEnd":1234}"#), "v1"),
            (Some(r#"{"idStart":1}"#), "v1"),
            (Some(r#"{"idStart":"x","idEnd":5000}"#), "v1"),
            (Some("not json"), "v1"),
            (Some("[1,5000]"), "v1"),
            (None, "v1"),
        ];
        for (range, want) in cases {
            set(&mut known, "Grayscale_Range", *range);
            assert_eq!(&*decision(&p, &r, &known).version, *want, "range {range:?}");
        }
        set(
            &mut known,
            "Grayscale_Range",
            Some(r#"{"idStart":1,"idEnd":5000}"#),
        );
        set(&mut known, "TOKEN_abc", Some("12x"));
        assert_eq!(&*decision(&p, &r, &known).version, "v1");
        set(&mut known, "TOKEN_abc", None);
        assert_eq!(&*decision(&p, &r, &known).version, "v1");
        assert_eq!(&*decision(&p, &req(), &known).version, "v1");
    }

    #[test]
    fn unavailable_store_never_selects_the_rule() {
        let p = web(&format!(
            "{RULE}when = {{ not = {{ client_ip = true, lookup = {{ list = \"ips\" }}, equals = \"1\" }} }}"
        ));
        let r = req();
        let known = Map(HashMap::from([(
            ("ips".into(), "192.0.2.1".into()),
            LookupAnswer::Unavailable,
        )]));
        assert_eq!(&*decision(&p, &r, &known).version, "v1");
        let known = Map(HashMap::from([(
            ("ips".into(), "192.0.2.1".into()),
            LookupAnswer::Absent,
        )]));
        assert_eq!(&*decision(&p, &r, &known).version, "v2");
    }

    #[test]
    fn lookups_only_for_rules_reached_in_order() {
        // r0 (linear, needs a lookup), r1 (indexed), r2 (linear, needs a lookup).
        let p = web(
            "[[services.rules]]\nname = \"r0\"\nversion = \"v2\"\n\
             when = { header = \"token\", lookup = { list = \"l\", key = \"a_{}\" }, equals = \"1\" }\n\
             [[services.rules]]\nname = \"r1\"\nversion = \"v2\"\n\
             when = { any = [ { header = \"x-env\", in = [\"beta\"] }, { cidr = [\"10.0.0.0/8\"] } ] }\n\
             [[services.rules]]\nname = \"r2\"\nversion = \"v2\"\n\
             when = { header = \"x-env\", lookup = { list = \"l\", key = \"b_{}\" }, equals = \"1\" }",
        );
        assert_eq!(p.services[0].index.linear, [0, 2]);
        let need = |key: &str| Evaluation::NeedLookup {
            list: "l".into(),
            key: key.into(),
        };
        let mut known = Map(HashMap::new());
        // r1 matches, but r0 comes first: its lookup is needed.
        let r = req().header("token", "t").ip("10.0.0.1");
        assert_eq!(p.evaluate(&r.facts(), &known), need("a_t"));
        known
            .0
            .insert(("l".into(), "a_t".into()), LookupAnswer::Unavailable);
        let d = decision(&p, &r, &known);
        assert_eq!(d.reason, Reason::Rule { name: "r1".into() });
        // r1 matches: r2's lookup is never asked for.
        let r = req().header("x-env", "beta");
        let d = decision(&p, &r, &known);
        assert_eq!(d.reason, Reason::Rule { name: "r1".into() });
        // r1 does not match: r2 is reached.
        let r = req().header("x-env", "prod");
        assert_eq!(p.evaluate(&r.facts(), &known), need("b_prod"));
    }

    #[test]
    fn modulo_by_a_divisor_above_i64_max_does_not_overflow() {
        // TOML integers stop at i64::MAX; a JSON document (admin API, store) can say more.
        let doc: PolicyDoc = serde_json::from_value(serde_json::json!({
            "routes": [{ "service": "web" }],
            "services": [{
                "name": "web", "stable": "v1", "versions": { "v1": "prod", "v2": "gray" },
                "rules": [{ "name": "r", "version": "v2", "when": {
                    "header": "x-uid",
                    "modulo": { "divisor": u64::MAX, "remainders": [u64::MAX - 1, 5] }
                } }]
            }]
        }))
        .expect("document");
        let p = compile(&doc, UPSTREAMS).expect("compiles");
        // -1 mod (2^64 - 1) = 2^64 - 2
        assert_eq!(version(&p, &req().header("x-uid", "-1")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "5")), "v2");
        assert_eq!(version(&p, &req().header("x-uid", "6")), "v1");
        assert_eq!(
            version(&p, &req().header("x-uid", "-9223372036854775808")),
            "v1"
        );
    }

    #[test]
    fn routes_by_host_and_path_prefix() {
        let p = policy(
            "[[routes]]\nhosts = [\"api.example.com\"]\npath_prefix = \"/v2\"\nservice = \"b\"\n\
             [[routes]]\nhosts = [\"api.example.com\"]\nservice = \"a\"\n\
             [[routes]]\nhosts = [\"*.shop.test\"]\nservice = \"b\"\n\
             [[routes]]\nname = \"fallback\"\npath_prefix = \"/static\"\nservice = \"a\"\n\
             [[services]]\nname = \"a\"\nstable = \"s\"\nversions = { s = \"prod\" }\n\
             [[services]]\nname = \"b\"\nstable = \"s\"\nversions = { s = \"gray\" }\n",
        );
        let route = |host: &'static str, path: &'static str| {
            let mut r = req();
            r.host = host;
            r.path = path;
            match p.evaluate(&r.facts(), &NoLookups) {
                Evaluation::Decided(d) => Some(d.service.to_string()),
                _ => None,
            }
        };
        assert_eq!(route("api.example.com", "/v2/x").as_deref(), Some("b"));
        assert_eq!(route("API.example.com:8080", "/v2").as_deref(), Some("b"));
        assert_eq!(route("api.example.com", "/v20").as_deref(), Some("a"));
        assert_eq!(route("eu.shop.test", "/").as_deref(), Some("b"));
        assert_eq!(route("shop.test", "/"), None);
        assert_eq!(route("other", "/static/app.js").as_deref(), Some("a"));
        assert_eq!(route("other", "/"), None);
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
            let got = compile_err(&text);
            assert!(
                got.contains(want),
                "for {extra:?}\n want {want:?}\n got  {got:?}"
            );
        }
        let dup = compile_err("[[services]]\nname = \"a\"\nstable = \"v\"\nversions = { v = \"prod\" }\n[[services]]\nname = \"a\"\nstable = \"v\"\nversions = { v = \"prod\" }");
        assert!(
            dup.contains("services[1].name: service `a` is defined twice"),
            "{dup}"
        );
    }
}
