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
