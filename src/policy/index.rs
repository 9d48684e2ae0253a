//! Rule indexes: the first matching rule of a service without walking its rules one by one.
//!
//! A rule whose condition is a single `equals`, `in`, `ids`, `cidr` or `range` test on a source,
//! without a store lookup (or an `any` of such tests, or an `all` of just one), is *indexed*: its
//! values go into per-source tables that answer, for a request, the lowest index of an indexed rule
//! that matches. Every other rule is *linear* and is evaluated in order, as before, but only if
//! its index is below that answer. So a decision costs one probe per indexed source plus the
//! linear rules that come before the first indexed match, whatever the number of indexed rules
//! and the size of their lists, and first-match-wins holds exactly: a linear rule is evaluated
//! (and may ask for a store lookup) only when every rule before it failed.

use super::compiled::{Cond, Rule, Source, Test};
use super::hash::FastState;
use super::iptable::{IpRankTable, IpTable};
use std::collections::HashMap;

/// No rule: ranks are rule indexes, and this is above all of them.
pub(super) const NONE: u32 = u32::MAX;

/// How a service's rules are found.
#[derive(Debug, Default)]
pub(super) struct RuleIndex {
    /// One entry per source that indexed rules test, by ascending `first`.
    pub sources: Vec<SourceIndex>,
    /// Indexes of the rules evaluated one by one, ascending.
    pub linear: Vec<u32>,
}

/// The indexed tests on one source, each value or interval mapped to the lowest rule index that
/// matches it.
#[derive(Debug)]
pub(super) struct SourceIndex {
    /// The source's slot in the service's source table.
    pub slot: usize,
    /// The source is the client IP: `cidr` tests read the address itself.
    pub client_ip: bool,
    /// The lowest rule index in any table below: no need to read the source when a rule before
    /// it already matched.
    pub first: u32,
    /// `equals` and `in`: value -> rule.
    pub strings: HashMap<String, u32, FastState>,
    /// `ids`: integer -> rule.
    pub ids: HashMap<i64, u32, FastState>,
    /// `cidr`: network -> rule.
    pub nets: IpRankTable,
    /// `range`.
    pub ranges: RangeIndex,
}

impl SourceIndex {
    fn new(slot: usize, client_ip: bool) -> Self {
        Self {
            slot,
            client_ip,
            first: NONE,
            strings: HashMap::default(),
            ids: HashMap::default(),
            nets: IpRankTable::default(),
            ranges: RangeIndex::default(),
        }
    }
}

/// Integer ranges (as the `f64`s evaluation compares) cut into elementary pieces: the sorted
/// distinct bounds `b0 < b1 < ... < bk-1` and the open intervals around them, piece `2i + 1` being
/// the point `bi` and piece `2i` the interval just below it (`2k` is above the last bound). Each
/// piece holds the lowest rule whose range covers it, so a lookup is one binary search.
#[derive(Debug, Default)]
pub(super) struct RangeIndex {
    bounds: Vec<f64>,
    pieces: Vec<u32>,
}

impl RangeIndex {
    /// `ranges` as (start, end, exclusive, rule), in any order; a range must not be empty.
    fn build(mut ranges: Vec<(f64, f64, bool, u32)>) -> Self {
        if ranges.is_empty() {
            return Self::default();
        }
        let mut bounds: Vec<f64> = ranges.iter().flat_map(|r| [r.0, r.1]).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let at = |x: f64| {
            bounds
                .binary_search_by(|b| b.total_cmp(&x))
                .expect("every bound is in the table")
        };
        let mut pieces = vec![NONE; 2 * bounds.len() + 1];
        // Painting ranges by ascending rule: each piece takes the first rule that reaches it.
        // `next[i]` leads to the first unpainted piece at or after `i` (path halving), so the
        // whole build is nearly linear even for heavily overlapping ranges.
        let mut next: Vec<usize> = (0..=pieces.len()).collect();
        fn find(next: &mut [usize], mut i: usize) -> usize {
            while next[i] != i {
                next[i] = next[next[i]];
                i = next[i];
            }
            i
        }
        ranges.sort_by_key(|r| r.3);
        for (start, end, exclusive, rule) in ranges {
            let (lo, hi) = if exclusive {
                (2 * at(start) + 2, 2 * at(end))
            } else {
                (2 * at(start) + 1, 2 * at(end) + 1)
            };
            let mut i = find(&mut next, lo);
            while i <= hi {
                pieces[i] = rule;
                next[i] = i + 1;
                i = find(&mut next, i + 1);
            }
        }
        Self { bounds, pieces }
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The lowest rule whose range holds `n` ([`NONE`] if none does).
    #[inline]
    pub fn lowest(&self, n: f64) -> u32 {
        let p = self.bounds.partition_point(|b| *b < n);
        let piece = if self.bounds.get(p) == Some(&n) {
            2 * p + 1
        } else {
            2 * p
        };
        self.pieces[piece]
    }
}

/// One indexable test of a rule.
enum Atom<'r> {
    Strings(usize, Vec<&'r str>),
    Ids(usize, Vec<i64>),
    Cidr(usize, &'r IpTable),
    Range(usize, f64, f64, bool),
}

/// The indexable tests a condition is the `any` of, or `None` if it is not indexable.
fn atoms<'r>(cond: &'r Cond, out: &mut Vec<Atom<'r>>) -> bool {
    match cond {
        Cond::Any(items) => items.iter().all(|c| atoms(c, out)),
        Cond::All(items) if items.len() == 1 => atoms(&items[0], out),
        Cond::Test {
            slot,
            lookup: None,
            test,
            ..
        } => {
            let slot = *slot;
            out.push(match test {
                Test::Equals(v) => Atom::Strings(slot, vec![v.as_str()]),
                Test::In(set) => Atom::Strings(slot, set.iter().map(String::as_str).collect()),
                Test::Ids(set) => Atom::Ids(slot, set.iter().copied().collect()),
                Test::Cidr(table) => Atom::Cidr(slot, table),
                Test::Range {
                    start,
                    end,
                    exclusive,
                } => Atom::Range(slot, *start, *end, *exclusive),
                _ => return false,
            });
            true
        }
        _ => false,
    }
}

impl RuleIndex {
    /// Indexes the rules of a service whose sources are `sources` (the slots the conditions name).
    pub fn build(rules: &[Rule], sources: &[Source]) -> Self {
        let mut by_slot: Vec<Option<SourceIndex>> = (0..sources.len()).map(|_| None).collect();
        let mut ranges: Vec<Vec<(f64, f64, bool, u32)>> = vec![Vec::new(); sources.len()];
        let mut linear = Vec::new();
        let mut found = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let rank = u32::try_from(i).expect("fewer than 4 billion rules");
            found.clear();
            if !atoms(&rule.cond, &mut found) {
                linear.push(rank);
                continue;
            }
            for atom in found.drain(..) {
                let slot = match &atom {
                    Atom::Strings(s, _)
                    | Atom::Ids(s, _)
                    | Atom::Cidr(s, _)
                    | Atom::Range(s, ..) => *s,
                };
                let index = by_slot[slot].get_or_insert_with(|| {
                    SourceIndex::new(slot, matches!(sources[slot], Source::ClientIp))
                });
                index.first = index.first.min(rank);
                // Rules come in ascending order: a value already present keeps its lower rule.
                match atom {
                    Atom::Strings(_, values) => {
                        for v in values {
                            index.strings.entry(v.to_string()).or_insert(rank);
                        }
                    }
                    Atom::Ids(_, values) => {
                        for v in values {
                            index.ids.entry(v).or_insert(rank);
                        }
                    }
                    Atom::Cidr(_, table) => index.nets.insert_table(table, rank),
                    Atom::Range(_, start, end, exclusive) => {
                        ranges[slot].push((start, end, exclusive, rank))
                    }
                }
            }
        }
        let mut indexed: Vec<SourceIndex> = by_slot
            .into_iter()
            .zip(ranges)
            .filter_map(|(index, ranges)| {
                let mut index = index?;
                index.ranges = RangeIndex::build(ranges);
                index.strings.shrink_to_fit();
                index.ids.shrink_to_fit();
                Some(index)
            })
            .collect();
        indexed.sort_by_key(|s| s.first);
        RuleIndex {
            sources: indexed,
            linear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lowest covering rule, the slow way.
    fn naive(ranges: &[(f64, f64, bool, u32)], n: f64) -> u32 {
        ranges
            .iter()
            .filter(|(s, e, x, _)| {
                if *x {
                    *s < n && n < *e
                } else {
                    *s <= n && n <= *e
                }
            })
            .map(|r| r.3)
            .min()
            .unwrap_or(NONE)
    }

    #[test]
    fn range_pieces_answer_the_lowest_covering_rule() {
        let ranges = vec![
            (10.0, 20.0, false, 3),
            (15.0, 30.0, true, 1),
            (20.0, 20.0, false, 7),
            (-5.0, 10.0, true, 2),
            (0.0, 100.0, false, 9),
            (30.0, 31.0, true, 0),
        ];
        let index = RangeIndex::build(ranges.clone());
        for tenth in -100..1100 {
            let n = f64::from(tenth) / 10.0;
            assert_eq!(index.lowest(n), naive(&ranges, n), "at {n}");
        }
        assert_eq!(index.lowest(15.0), 3);
        assert_eq!(index.lowest(15.5), 1);
        assert_eq!(index.lowest(30.0), 9);
        assert_eq!(index.lowest(30.5), 0);
        assert_eq!(index.lowest(-0.0), 2);
        assert!(RangeIndex::build(Vec::new()).is_empty());
    }

    #[test]
    fn range_pieces_match_the_naive_answer_on_random_ranges() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let count = 1 + next(30);
            let ranges: Vec<(f64, f64, bool, u32)> = (0..count)
                .map(|rule| {
                    let a = next(50) as f64;
                    let b = a + next(20) as f64;
                    let exclusive = a < b && next(2) == 0;
                    (a, b, exclusive, rule as u32 * 3 % 31)
                })
                .collect();
            let index = RangeIndex::build(ranges.clone());
            for half in -2..150 {
                let n = f64::from(half) / 2.0;
                assert_eq!(index.lowest(n), naive(&ranges, n), "{ranges:?} at {n}");
            }
        }
    }
}

/// The indexed evaluation against the reference (every rule in order, every source read by every
/// test) on generated policies and requests: same decision, same reason, same lookup requested.
#[cfg(test)]
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
                rules,
                split,
                previous_stable: None,
            }],
        }
    }

    struct Request {
        headers: HeaderMap,
        query: Option<String>,
        ip: IpAddr,
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
                    headers: &r.headers,
                    random: r.random,
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
