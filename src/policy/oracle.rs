//! The test oracle: the plain evaluator that [`Policy::evaluate`] replaced, kept as the slow,
//! obvious twin the fast one must agree with.
//!
//! `evaluate_linear` walks every rule in order and reads every source again for every test, with
//! no rule index and no memo. The `equivalence` test runs both on generated policies and requests
//! and demands the same decision, the same reason and the same store lookup requested. Any change
//! to the fast path (an index, a parser, a memo) is checked against it.

use super::compile::{Policy, BUCKETS};
use super::compiled::{Cond, Source, Test};
use super::evaluate::{bucket_seeded, in_stored_range, key_of, lookup_value, Evaluation, Stop};
use super::request::{parse_integer, parse_number, source_value};
use super::{Decision, DecisionNames, LookupAnswer, Lookups, OverrideValue, Reason, RequestFacts};
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
                names: DecisionNames::new(
                    route.names[0].route.clone(),
                    service.name.clone(),
                    v.name.clone(),
                    stable.name.clone(),
                ),
                upstream: v.upstream,
                stable_upstream: stable.upstream,
                reason,
                note: None,
                set_cookie: None,
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
            let raw = match (source, lookup, facts.client_key) {
                (Source::ClientIp, Some(_), Some(key)) => Some(Cow::Borrowed(key)),
                _ => source_value(source, facts),
            };
            let Some(raw) = raw else {
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

/// The indexed evaluation against the reference (every rule in order, every source read by every
/// test) on generated policies and requests: same decision, same reason, same lookup requested.
mod equivalence {
    use super::super::model::*;
    use super::super::{compile, Evaluation, LookupAnswer, Lookups, Reason, RequestFacts};
    use http::{HeaderMap, HeaderName, HeaderValue};
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
        fn pick<'p, T>(&mut self, items: &'p [T]) -> &'p T {
            &items[self.below(items.len())]
        }
        fn int(&mut self) -> i64 {
            self.below(40) as i64 - 5
        }
    }

    const HEADERS: &[&str] = &["x-a", "X-A", "x-b", "x-uid"];
    const COOKIES: &[&str] = &["c1", "uid"];
    const QUERIES: &[&str] = &["q", "uid"];
    const WORDS: &[&str] = &[
        "a",
        "b",
        "beta",
        "1",
        "2",
        "7",
        "10",
        "17",
        "30",
        "-3",
        "0x10",
        " 7 ",
        "1e1",
        "7.0",
        "7.5",
        "10.1.2.3",
        " 192.0.2.1 ",
        "::1",
        "2001:db8::5",
        "abc",
        "",
        "always",
        "never",
        "9223372036854775807",
    ];
    const NETS: &[&str] = &[
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3",
        "192.0.2.0/24",
        "192.0.2.1/32",
        "2001:db8::/32",
        "::1",
        "0.0.0.0/0",
        "::/0",
        "::ffff:10.0.0.0/104",
        "10.1.2.0/24",
    ];
    const IPS: &[&str] = &[
        "10.1.2.3",
        "10.9.9.9",
        "10.1.7.7",
        "192.0.2.1",
        "192.0.2.77",
        "8.8.8.8",
        "::1",
        "2001:db8::5",
        "::ffff:10.1.2.3",
        "fe80::1",
    ];
    const LISTS: &[&str] = &["l1", "l2"];

    /// A source (header, cookie, query or client IP) on a condition.
    fn source(rng: &mut Rng, c: &mut Condition) {
        match rng.below(7) {
            0 | 1 => c.header = Some(rng.pick(HEADERS).to_string()),
            2 | 3 => c.cookie = Some(rng.pick(COOKIES).to_string()),
            4 | 5 => c.query = Some(rng.pick(QUERIES).to_string()),
            _ => c.client_ip = Some(true),
        }
    }

    fn words(rng: &mut Rng) -> Vec<String> {
        (0..1 + rng.below(3))
            .map(|_| rng.pick(WORDS).to_string())
            .collect()
    }

    /// One source plus one test; `indexable` limits it to the indexed kinds without lookup.
    fn test(rng: &mut Rng, indexable: bool) -> Condition {
        let mut c = Condition::default();
        let kind = if indexable {
            rng.below(6)
        } else {
            rng.below(15)
        };
        match kind {
            0 => c.equals = Some(rng.pick(WORDS).to_string()),
            1 => c.in_ = Some(words(rng)),
            2 => c.ids = Some((0..1 + rng.below(4)).map(|_| rng.int()).collect()),
            3 | 4 => {
                let start = rng.int();
                let exclusive = rng.chance(40);
                let end = start + rng.below(15) as i64 + i64::from(exclusive);
                c.range = Some(RangeDoc {
                    start,
                    end,
                    exclusive,
                });
            }
            5 => {
                c.cidr = Some(
                    (0..1 + rng.below(3))
                        .map(|_| rng.pick(NETS).to_string())
                        .collect(),
                )
            }
            6 => c.regex = Some(rng.pick(&["^1", "a", "^$", "0x", "\\."]).to_string()),
            7 => {
                c.suffix = Some(
                    rng.pick(&[vec!["7"], vec!["0", "3"], vec!["17"]])
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                )
            }
            8 => {
                let divisor = 1 + rng.below(5) as u64;
                c.modulo = Some(ModuloDoc {
                    divisor,
                    remainders: (0..divisor).filter(|_| rng.chance(50)).collect(),
                });
            }
            9 => {
                c.percent = Some(rng.below(101) as f64);
                if rng.chance(30) {
                    c.salt = Some("s".into());
                }
            }
            10 | 11 => c.present = Some(rng.chance(50)),
            12 => {
                c.range_from = Some(RangeFromDoc {
                    list: rng.pick(LISTS).to_string(),
                    key: rng.pick(&["range", "other"]).to_string(),
                    start: "idStart".into(),
                    end: "idEnd".into(),
                    exclusive: rng.chance(50),
                })
            }
            _ => {
                // A store lookup in front of an indexable test.
                let mut inner = test(rng, true);
                inner.lookup = Some(LookupDoc {
                    list: rng.pick(LISTS).to_string(),
                    key: rng.chance(50).then(|| "k_{}".to_string()),
                });
                if inner.client_ip.is_none()
                    && inner.cidr.is_some()
                    && inner.header.is_none()
                    && inner.cookie.is_none()
                    && inner.query.is_none()
                {
                    inner.client_ip = Some(true);
                }
                return inner;
            }
        }
        // `cidr` without a source reads the client IP.
        if !(c.cidr.is_some() && rng.chance(50)) {
            source(rng, &mut c);
        }
        c
    }

    fn condition(rng: &mut Rng, depth: u32) -> Condition {
        let combine = depth < 2 && rng.chance(if depth == 0 { 30 } else { 15 });
        if !combine {
            return test(rng, false);
        }
        let items = |rng: &mut Rng| {
            (0..1 + rng.below(3))
                .map(|_| condition(rng, depth + 1))
                .collect()
        };
        match rng.below(4) {
            0 => Condition {
                all: Some(items(rng)),
                ..Condition::default()
            },
            1 => Condition {
                not: Some(Box::new(condition(rng, depth + 1))),
                ..Condition::default()
            },
            // An `any` of indexable tests is indexed.
            2 => Condition {
                any: Some((0..1 + rng.below(3)).map(|_| test(rng, true)).collect()),
                ..Condition::default()
            },
            _ => Condition {
                any: Some(items(rng)),
                ..Condition::default()
            },
        }
    }

    fn policy(rng: &mut Rng) -> PolicyDoc {
        let rules = (0..rng.below(25))
            .map(|i| RuleDoc {
                name: format!("r{i}"),
                version: rng.pick(&["v1", "v2", "v3"]).to_string(),
                when: if rng.chance(70) {
                    test(rng, true)
                } else {
                    condition(rng, 0)
                },
            })
            .collect();
        let override_ = rng.chance(30).then(|| OverrideDoc {
            header: Some("x-a".into()),
            cookie: None,
            version: "v3".into(),
            from: Vec::new(),
            secret: None,
            key: None,
        });
        let split = rng.chance(60).then(|| SplitDoc {
            weights: BTreeMap::from([("v2".to_string(), 30.0), ("v3".to_string(), 20.0)]),
            by: match rng.below(4) {
                0 => None,
                1 => Some(IdentityDoc {
                    header: Some("x-uid".into()),
                    ..IdentityDoc::default()
                }),
                2 => Some(IdentityDoc {
                    cookie: Some("uid".into()),
                    ..IdentityDoc::default()
                }),
                _ => Some(IdentityDoc {
                    client_ip: Some(true),
                    ..IdentityDoc::default()
                }),
            },
            salt: None,
            sticky_cookie: None,
        });
        PolicyDoc {
            routes: vec![RouteDoc {
                name: None,
                hosts: Vec::new(),
                path_prefix: None,
                service: "web".into(),
            }],
            services: vec![ServiceDoc {
                name: "web".into(),
                stable: "v1".into(),
                versions: BTreeMap::from([
                    ("v1".to_string(), "prod".to_string()),
                    ("v2".to_string(), "gray".to_string()),
                    ("v3".to_string(), "gray".to_string()),
                ]),
                override_,
                follow: false,
                rules,
                split,
                previous_stable: None,
                previous_weight: None,
                rollout: None,
                mirror: None,
            }],
            ..PolicyDoc::default()
        }
    }

    struct Request {
        headers: HeaderMap,
        query: Option<String>,
        ip: IpAddr,
        /// The original client IP mode's header text, looked up instead of `ip`.
        client_key: Option<String>,
        random: u64,
    }

    fn request(rng: &mut Rng) -> Request {
        let mut headers = HeaderMap::new();
        for name in HEADERS {
            if rng.chance(45) {
                let value = if rng.chance(5) {
                    // Not visible ASCII: `to_str` fails, the header reads as absent.
                    HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque value")
                } else {
                    HeaderValue::from_str(rng.pick(WORDS).trim()).expect("header value")
                };
                headers.append(
                    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap(),
                    value,
                );
            }
        }
        for _ in 0..rng.below(3) {
            let pairs: Vec<String> = (0..1 + rng.below(3))
                .map(|_| {
                    format!(
                        "{}={}",
                        rng.pick(&["c1", "uid", "zz", " c1"]),
                        rng.pick(WORDS).trim()
                    )
                })
                .collect();
            headers.append(
                http::header::COOKIE,
                HeaderValue::from_str(&pairs.join("; ")).unwrap(),
            );
        }
        let query = rng.chance(70).then(|| {
            (0..1 + rng.below(3))
                .map(|_| {
                    let value = rng.pick(WORDS).trim().replace(':', "%3A");
                    match rng.below(4) {
                        0 => rng.pick(QUERIES).to_string(),
                        1 => format!("{}=%20{value}", rng.pick(QUERIES)),
                        _ => format!("{}={value}", rng.pick(&["q", "uid", "x"])),
                    }
                })
                .collect::<Vec<_>>()
                .join("&")
        });
        Request {
            headers,
            query,
            ip: rng.pick(IPS).parse().unwrap(),
            random: rng.next(),
            client_key: if rng.chance(20) {
                let pool = if rng.chance(50) { IPS } else { WORDS };
                Some(rng.pick(pool).to_string())
            } else {
                None
            },
        }
    }

    /// Store answers derived from the key: values, absences, failures and (when `unknown`)
    /// values not fetched yet.
    struct Store {
        seed: u64,
        unknown: bool,
    }

    impl Lookups for Store {
        fn get(&self, list: &str, key: &str) -> LookupAnswer {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(
                format!("{list}\0{key}").as_bytes(),
                self.seed,
            );
            match h % 10 {
                0 => LookupAnswer::Absent,
                1 => LookupAnswer::Unavailable,
                2 | 3 if self.unknown => LookupAnswer::Unknown,
                _ if key == "range" || key == "other" => {
                    let (a, b) = ((h >> 8) % 20, (h >> 16) % 30);
                    LookupAnswer::Value(format!(r#"{{"idStart":{a},"idEnd":"{b}"}}"#).into())
                }
                _ => LookupAnswer::Value(WORDS[(h >> 8) as usize % WORDS.len()].into()),
            }
        }
    }

    #[test]
    fn indexed_evaluation_agrees_with_the_reference() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let (mut rules, mut needs, mut splits, mut indexed_hits, mut linear_hits) = (0, 0, 0, 0, 0);
        for _ in 0..400 {
            let doc = policy(&mut rng);
            let p = compile(&doc, &["prod", "gray"]).unwrap_or_else(|e| panic!("{e}\n{doc:#?}"));
            let service = &p.services[0];
            for _ in 0..150 {
                let r = request(&mut rng);
                let facts = RequestFacts {
                    host: "example.com",
                    path: "/",
                    query: r.query.as_deref(),
                    client_ip: r.ip,
                    client_key: r.client_key.as_deref(),
                    headers: &r.headers,
                    random: r.random,
                    now: 0,
                    https: false,
                    followed: None,
                };
                let store = Store {
                    seed: rng.next(),
                    unknown: rng.chance(60),
                };
                let got = p.evaluate(&facts, &store);
                let want = p.evaluate_linear(&facts, &store);
                assert_eq!(
                    got, want,
                    "\npolicy {doc:#?}\nheaders {:?}\nquery {:?}\nip {}",
                    r.headers, r.query, r.ip
                );
                match &got {
                    Evaluation::Decided(d) => match &d.reason {
                        Reason::Rule { name } => {
                            rules += 1;
                            let at = service.rules.iter().position(|r| r.name == *name).unwrap();
                            if service.index.linear.contains(&(at as u32)) {
                                linear_hits += 1;
                            } else {
                                indexed_hits += 1;
                            }
                        }
                        Reason::Split { .. } => splits += 1,
                        _ => {}
                    },
                    Evaluation::NeedLookup { .. } => needs += 1,
                    Evaluation::NoRoute => unreachable!("one route serves all"),
                }
            }
        }
        // The generator reaches every outcome often.
        for (what, count) in [
            ("rule", rules),
            ("indexed rule", indexed_hits),
            ("linear rule", linear_hits),
            ("lookup", needs),
            ("split", splits),
        ] {
            assert!(count > 1000, "{what}: only {count} of 60000");
        }
    }
}
