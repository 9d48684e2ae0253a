//! The compiled form of a rule: what `compile` builds from a [`super::model::RuleDoc`], what the
//! rule index (`index`) files into its tables, and what `evaluate` walks.
//!
//! These types sit below both `compile` and `index`, so that the index can read rules without
//! knowing how they were made, and `compile` can build a service's index without the index
//! reaching back into it. They hold no logic: validation lives in `compile`, matching in
//! `evaluate`.

use super::hash::FastState;
use super::iptable::IpTable;
use http::HeaderName;
use regex::Regex;
use std::collections::HashSet;
use std::sync::Arc;

/// One rule of a service: if `cond` holds, the request goes to `version`.
#[derive(Debug)]
pub(super) struct Rule {
    /// The rule's name, shared with every [`super::Reason::Rule`] that names it.
    pub name: super::RuleName,
    /// Index into the service's versions.
    pub version: usize,
    pub cond: Cond,
}

/// A rule's condition: tests combined with `all`, `any` and `not`.
#[derive(Debug)]
pub(super) enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    /// One test of one source, optionally through a store lookup.
    Test {
        source: Source,
        /// The source's index in the service's source table: evaluation reads each source at most
        /// once per request, whatever the number of tests on it.
        slot: usize,
        /// Replaces the source's value by the store value it maps to before the test.
        lookup: Option<Lookup>,
        test: Test,
    },
}

/// Where a test reads its value in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
}

/// A store lookup: the source's value, put in a key template, looked up in a list.
#[derive(Debug)]
pub(super) struct Lookup {
    pub list: Arc<str>,
    /// The key template split at `{}`.
    pub before: String,
    pub after: String,
}

/// What a value is tested for. Sets are hashed and networks tabled at compile time, so that a test
/// costs the same whatever the size of its list.
#[derive(Debug)]
pub(super) enum Test {
    Equals(String),
    In(HashSet<String, FastState>),
    Regex(Regex),
    Cidr(IpTable),
    Range {
        start: f64,
        end: f64,
        exclusive: bool,
    },
    /// The range is itself a store value: `{"<start>": n, "<end>": m}` under `key` in `list`.
    RangeFrom {
        list: Arc<str>,
        key: String,
        start: String,
        end: String,
        exclusive: bool,
    },
    Ids(HashSet<i64, FastState>),
    Suffix(Vec<String>),
    Modulo {
        divisor: u64,
        remainders: HashSet<u64, FastState>,
    },
    /// The identity's bucket (0..10000) under `seed` is below `threshold`.
    Percent {
        threshold: u32,
        seed: u64,
    },
    Present(bool),
}
