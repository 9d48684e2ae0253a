//! Request facts -> decision. The hot path: no allocation unless a rule looks a value up in a
//! store (the key is built then), reads the client IP as text, or the service reads more than
//! [`INLINE_SLOTS`] distinct sources.
//!
//! The steps: the route (host, then path prefix), the tester override, the first matching rule,
//! the split, else stable. Each source (a header, a cookie, a query parameter, the client IP) is
//! read from the request at most once per evaluation, and parsed as a number at most once,
//! however many rules test it (see `request`). The rule indexes (see `index`) give the first
//! indexed rule that matches; only the linear rules before it are evaluated, in order. The plain
//! evaluator this one is checked against lives in `oracle`.

use super::compile::{seed_of, Override, Policy, RouteEntry, Service, BUCKETS};
use super::compiled::{Cond, Lookup, Source, Test};
use super::index::{SourceIndex, NONE};
use super::request::{parse_integer, parse_number, strip_port, Memo, Slot, INLINE_SLOTS};
use super::token;
use super::{Decision, LookupAnswer, Lookups, Note, OverrideValue, Reason, RequestFacts};
use smallvec::SmallVec;
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

pub(super) fn bucket_seeded(seed: u64, identity: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(identity.as_bytes(), seed) % u64::from(BUCKETS)) as u32
}

fn decided(service: &Service, route: &RouteEntry, version: usize, reason: Reason) -> Decision {
    Decision {
        names: route.names[version].clone(),
        upstream: service.versions[version].upstream,
        stable_upstream: service.versions[service.stable].upstream,
        reason,
        note: None,
        set_cookie: None,
    }
}

/// Whether the override's `always` counts for this request: `None` if it does, else why not.
fn override_allowed(
    service: &Service,
    o: &Override,
    rest: Option<&str>,
    facts: &RequestFacts<'_>,
) -> Option<Note> {
    if let Some(from) = &o.from {
        if !from.contains(facts.client_ip) {
            return Some(Note::OverrideFromOutside);
        }
    }
    match token::check_override(
        rest,
        o.secret.as_deref(),
        o.key.as_ref(),
        &service.name,
        &service.versions[o.version].name,
        facts.now,
    ) {
        token::OverrideCheck::Valid => None,
        token::OverrideCheck::BadSecret => Some(Note::OverrideBadSecret),
        token::OverrideCheck::Expired => Some(Note::OverrideExpired),
    }
}

/// Why a condition could not be decided.
pub(super) enum Stop {
    Need(Arc<str>, String),
}

impl Policy {
    /// Decides which version answers a request.
    pub fn evaluate(&self, facts: &RequestFacts<'_>, lookups: &dyn Lookups) -> Evaluation {
        let Some(route) = self.find_route(facts.host, facts.path) else {
            return Evaluation::NoRoute;
        };
        let service = &self.services[route.service];
        let decide = |version: usize, reason: Reason| {
            Evaluation::Decided(decided(service, route, version, reason))
        };

        // A trusted upstream graygate's choice, when it names a version of this service.
        let mut note = None;
        if service.follow {
            if let Some(name) = facts.followed {
                match service
                    .versions
                    .iter()
                    .position(|v| &*v.name == name.trim())
                {
                    Some(v) => return decide(v, Reason::Followed),
                    None => note = Some(Note::FollowUnknownVersion),
                }
            }
        }

        // Only the service's own slots are written (and dropped), not the whole inline array,
        // and in place (a collected SmallVec is copied out whole).
        let mut slots: SmallVec<[Slot<'_>; INLINE_SLOTS]> = SmallVec::new();
        slots.extend((0..service.sources.len()).map(|_| Slot::EMPTY));
        let mut memo = Memo {
            facts,
            sources: &service.sources,
            slots: &mut slots[..],
        };

        if let Some(o) = &service.override_ {
            if let Some(value) = memo.raw(o.slot) {
                let value = value.trim();
                // `always:<secret>` or `always:<expiry>:<signature>` when the override has a
                // secret or a key; plain `always` otherwise.
                let guarded = o.secret.is_some() || o.key.is_some();
                let (word, rest) = match value.split_once(':') {
                    Some((word, rest)) if guarded => (word, Some(rest)),
                    _ => (value, None),
                };
                if word.eq_ignore_ascii_case("always") {
                    match override_allowed(service, o, rest, facts) {
                        None => {
                            return decide(
                                o.version,
                                Reason::Override {
                                    value: OverrideValue::Always,
                                },
                            )
                        }
                        Some(refused) => note = Some(refused),
                    }
                } else if word.eq_ignore_ascii_case("never") {
                    return decide(
                        service.stable,
                        Reason::Override {
                            value: OverrideValue::Never,
                        },
                    );
                }
            }
        }
        let noted = |e: Evaluation| match e {
            Evaluation::Decided(mut d) if d.note.is_none() => {
                d.note = note;
                Evaluation::Decided(d)
            }
            other => other,
        };

        match first_rule(service, &mut memo, lookups) {
            Err(Stop::Need(list, key)) => return Evaluation::NeedLookup { list, key },
            Ok(Some(i)) => {
                let rule = &service.rules[i];
                return noted(decide(
                    rule.version,
                    Reason::Rule {
                        name: rule.name.clone(),
                    },
                ));
            }
            Ok(None) => {}
        }

        if let Some(split) = &service.split {
            let identity = split.by.and_then(|slot| memo.raw(slot));
            let version_of = |bucket: u32| {
                split
                    .bounds
                    .iter()
                    .find(|(upper, _)| bucket < *upper)
                    .map_or(service.stable, |(_, v)| *v)
            };
            let (bucket, reason) = match (identity, &split.cookie) {
                (Some(id), _) => {
                    let bucket = bucket_seeded(split.seed, id);
                    (
                        bucket,
                        Reason::Split {
                            bucket,
                            sticky: true,
                        },
                    )
                }
                (None, Some(cookie)) => {
                    let kept = memo
                        .raw(cookie.slot)
                        .map(|v| token::bucket_id_of(v.trim(), cookie.key.as_ref()));
                    if let Some(Some(id)) = kept {
                        let bucket = bucket_seeded(split.seed, id);
                        (bucket, Reason::Bucket { bucket, new: false })
                    } else {
                        // Missing or invalid: a new bucket id, kept by the client from now on.
                        let value = token::new_bucket_id(facts.random, cookie.key.as_ref());
                        let bucket =
                            bucket_seeded(split.seed, value.split('.').next().unwrap_or(""));
                        let secure = cookie.secure.unwrap_or(facts.https);
                        let header = format!(
                            "{}={value}{}{}",
                            cookie.name,
                            cookie.attributes,
                            if secure { "; Secure" } else { "" }
                        );
                        let replaced = kept.is_some();
                        let mut d = decided(
                            service,
                            route,
                            version_of(bucket),
                            Reason::Bucket { bucket, new: true },
                        );
                        d.set_cookie = Some(header);
                        d.note = note.or(Some(if replaced {
                            Note::BucketCookieReplaced
                        } else {
                            Note::BucketCookieNew
                        }));
                        return Evaluation::Decided(d);
                    }
                }
                // No identity to stick to: stable, so that the version never flips for it.
                (None, None) if split.by.is_some() => {
                    return noted(decide(service.stable, Reason::Default))
                }
                (None, None) => {
                    let bucket = (facts.random % u64::from(BUCKETS)) as u32;
                    (
                        bucket,
                        Reason::Split {
                            bucket,
                            sticky: false,
                        },
                    )
                }
            };
            return noted(decide(version_of(bucket), reason));
        }
        noted(decide(service.stable, Reason::Default))
    }

    pub(super) fn find_route(&self, host: &str, path: &str) -> Option<&RouteEntry> {
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
            source,
            slot,
            lookup: Some(l),
            test,
        } => {
            let raw = match (source, memo.facts.client_key) {
                (Source::ClientIp, Some(key)) => Some(key),
                _ => memo.raw(*slot),
            };
            let Some(raw) = raw else {
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

pub(super) fn key_of(l: &Lookup, value: &str) -> String {
    let mut key = String::with_capacity(l.before.len() + value.len() + l.after.len());
    key.push_str(&l.before);
    key.push_str(value);
    key.push_str(&l.after);
    key
}

pub(super) fn lookup_value(l: &Lookup, value: &str, lookups: &dyn Lookups) -> LookupAnswer {
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
///
/// The document is read once per request that tests it, so it is read in place: only the two
/// bounds are kept, with no `serde_json::Value` (a map and a string per field) built and dropped
/// each time, which was a tenth of such a request's instructions. It reads the document as that
/// `Value` would (a later duplicate field wins, any other field is skipped but must be valid
/// JSON); a generated test holds the two readings equal.
pub(super) fn in_stored_range(
    doc: &str,
    start: &str,
    end: &str,
    exclusive: bool,
    value: &str,
) -> bool {
    let Ok((Some(lo), Some(hi))) = range_bounds(doc, start, end) else {
        return false;
    };
    let Some(n) = parse_number(value) else {
        return false;
    };
    if exclusive {
        lo < n && n < hi
    } else {
        lo <= n && n <= hi
    }
}

/// The bounds named `start` and `end` of the JSON object `doc`, each `None` when absent or
/// neither a number nor a numeric string; an error when `doc` is not a JSON object.
fn range_bounds(
    doc: &str,
    start: &str,
    end: &str,
) -> Result<(Option<f64>, Option<f64>), serde_json::Error> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    use std::fmt;

    /// Which field a key names.
    enum Field {
        Start,
        End,
        Other,
    }

    struct FieldOf<'n> {
        start: &'n str,
        end: &'n str,
    }

    impl<'de> serde::de::DeserializeSeed<'de> for FieldOf<'_> {
        type Value = Field;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl Visitor<'_> for FieldOf<'_> {
        type Value = Field;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Field, E> {
            Ok(if key == self.start {
                Field::Start
            } else if key == self.end {
                Field::End
            } else {
                Field::Other
            })
        }
    }

    /// A bound as `Value` would give it to `bound`: a number as `as_f64`, a string through
    /// `parse_number`, anything else (read through) `None`. It also reads through every value
    /// that is not a bound. Not `IgnoredAny`: serde_json skips that without its recursion
    /// limit, and `Value` refuses a document nested deeper than it; through `deserialize_any`
    /// the limit holds here too, which also bounds this reader's own recursion.
    struct Bound(Option<f64>);

    impl<'de> serde::Deserialize<'de> for Bound {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bound, D::Error> {
            d.deserialize_any(BoundVisitor)
        }
    }

    struct BoundVisitor;

    impl<'de> Visitor<'de> for BoundVisitor {
        type Value = Bound;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_u64<E>(self, n: u64) -> Result<Bound, E> {
            Ok(Bound(Some(n as f64)))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Bound, E> {
            Ok(Bound(Some(n as f64)))
        }
        fn visit_f64<E>(self, n: f64) -> Result<Bound, E> {
            Ok(Bound(Some(n)))
        }
        fn visit_str<E>(self, s: &str) -> Result<Bound, E> {
            Ok(Bound(parse_number(s)))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Bound, E> {
            Ok(Bound(None))
        }
        fn visit_unit<E>(self) -> Result<Bound, E> {
            Ok(Bound(None))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bound, A::Error> {
            while seq.next_element::<Bound>()?.is_some() {}
            Ok(Bound(None))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bound, A::Error> {
            while map.next_entry::<Bound, Bound>()?.is_some() {}
            Ok(Bound(None))
        }
    }

    struct Doc<'n> {
        start: &'n str,
        end: &'n str,
    }

    impl<'de> Visitor<'de> for Doc<'_> {
        type Value = (Option<f64>, Option<f64>);
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut lo, mut hi) = (None, None);
            let names = || FieldOf {
                start: self.start,
                end: self.end,
            };
            while let Some(field) = map.next_key_seed(names())? {
                match field {
                    Field::Start => lo = map.next_value::<Bound>()?.0,
                    Field::End => hi = map.next_value::<Bound>()?.0,
                    Field::Other => {
                        map.next_value::<Bound>()?;
                    }
                }
            }
            Ok((lo, hi))
        }
    }

    let mut reader = serde_json::Deserializer::from_str(doc);
    let bounds = (&mut reader).deserialize_map(Doc { start, end })?;
    reader.end()?;
    Ok(bounds)
}

#[cfg(test)]
mod tests;
