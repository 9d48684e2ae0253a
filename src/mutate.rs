//! Generated bad input for the property tests: valid input taken apart the way mistakes, broken
//! tools and attackers take it apart, and plain random bytes.
//!
//! Random bytes rarely get past the first check of a parser; a valid document with one thing
//! wrong reaches the checks after it. So most generators here start from something valid (a
//! config, a policy, a JSON body, a request head) and apply a few [`Edit`]s to its bytes or
//! lines, or replace one node of a JSON tree ([`mutated_json`]) with a value of the wrong kind or
//! size. Every edit is a plain value that proptest shrinks, so that a failure is reported as the
//! smallest change to the valid input that still fails.
//!
//! Each property is bounded by [`bounded`]: a number of cases, a time per case, and a time for
//! shrinking, and keeps the seeds of its failures in `proptest-regressions/` beside the sources
//! (committed, and replayed first on every run).
//!
//! Test-only. The end-to-end tests include this file too (`tests/e2e/support/mod.rs`), so it
//! names nothing of the crate.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::FileFailurePersistence;

/// A property's bounds: `cases` generated inputs, each run in at most `case_ms` (a slower case
/// fails the property), shrinking a failure for at most 30 s. The seeds of failures are written
/// to `proptest-regressions/<source path>.txt` (beside `src/` for the library's tests, beside
/// `tests/e2e/` for the end-to-end ones) and replayed before the generated cases.
pub fn bounded(cases: u32, case_ms: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        timeout: case_ms,
        max_shrink_time: 30_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// `n` values of `strategy`, the same on every run: for the tests that check that a generator
/// reaches each outcome (accepted, refused) often enough for its property to mean something.
pub fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..n)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("the generators here reject nothing")
                .current()
        })
        .collect()
}

/// Asserts that each outcome was seen in at least one in twenty of `total` cases.
pub fn assert_reaches(total: usize, outcomes: &[(&str, usize)]) {
    for (what, count) in outcomes {
        assert!(
            *count * 20 >= total,
            "{what}: {count} of {total} cases; the generator must reach it more often ({outcomes:?})"
        );
    }
}

/// Values that break parsers: numbers too large for every integer type, negative, fractional,
/// not numbers at all; quotes, brackets and separators of TOML, JSON and HTTP; line ends, NUL,
/// bytes that are not UTF-8, a byte order mark.
pub const NASTY: &[&[u8]] = &[
    b"0",
    b"-1",
    b"-0",
    b"1.5",
    b"1e309",
    b"-1e309",
    b"NaN",
    b"nan",
    b"inf",
    b"-inf",
    b"0x7fffffffffffffff",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"99999999999999999999999999999999999999",
    b"4294967296",
    b"65536",
    b"\"",
    b"'",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"[",
    b"]",
    b"{",
    b"}",
    b"[[",
    b"]]",
    b"=",
    b",",
    b":",
    b".",
    b"/",
    b"%",
    b"%00",
    b"*",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\0",
    b" ",
    b"\t",
    b"\xff",
    b"\xc3",
    b"\xc3\xa9",
    b"\xef\xbb\xbf",
    b"\xf0\x9f\x98\x80",
    b"true",
    b"null",
    b"::",
    b"::ffff:10.0.0.1",
    b"[::1]",
    b"255.255.255.256",
    b"0/0",
    b"/129",
];

/// A position scaled into whatever length it is used on: `At(0)` is the first, `At(usize::MAX)`
/// the last. Shrinks towards the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At(pub usize);

impl At {
    /// The position in `len` items (`len` > 0).
    pub fn of(self, len: usize) -> usize {
        // A fixed-point multiply: `self.0 / 2^64` of the way along.
        ((len as u128 * self.0 as u128) >> usize::BITS) as usize
    }
}

impl Arbitrary for At {
    type Parameters = ();
    type Strategy = prop::strategy::Map<std::ops::RangeInclusive<usize>, fn(usize) -> At>;

    fn arbitrary_with(_: ()) -> Self::Strategy {
        (0..=usize::MAX).prop_map(At as fn(usize) -> At)
    }
}

/// One change to a valid input. Positions are [`At`]s, so that they fall inside whatever
/// length the input has when the edit is applied.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Flips one bit of one byte.
    FlipBit(At, u8),
    /// Inserts one of the [`NASTY`] values.
    Insert(At, At),
    /// Deletes up to this many bytes.
    Delete(At, usize),
    /// Repeats a run of up to this many bytes right after itself.
    Duplicate(At, usize),
    /// Replaces the run of digits at or after a position with one of the [`NASTY`] values.
    Number(At, At),
    /// Inserts a run of one byte, this long: a very long key, value or line.
    Long(At, u8, usize),
    /// Deletes one line.
    DeleteLine(At),
    /// Repeats one line right after itself (a key given twice, a table twice).
    DuplicateLine(At),
    /// Swaps two lines (a key moved under another table).
    SwapLines(At, At),
}

/// Any one [`Edit`].
pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<At>(), 0u8..8).prop_map(|(at, bit)| Edit::FlipBit(at, bit)),
        3 => (any::<At>(), any::<At>()).prop_map(|(at, what)| Edit::Insert(at, what)),
        1 => (any::<At>(), 1usize..16).prop_map(|(at, n)| Edit::Delete(at, n)),
        1 => (any::<At>(), 1usize..32).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        3 => (any::<At>(), any::<At>()).prop_map(|(at, what)| Edit::Number(at, what)),
        1 => (any::<At>(), prop::sample::select(&b"a0 \"\r\n\0\xff[{,%"[..]), 1usize..70_000)
            .prop_map(|(at, byte, n)| Edit::Long(at, byte, n)),
        2 => any::<At>().prop_map(Edit::DeleteLine),
        2 => any::<At>().prop_map(Edit::DuplicateLine),
        1 => (any::<At>(), any::<At>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// A position in `len` bytes, `len` itself included (an insertion at the end).
fn position(at: &At, len: usize) -> usize {
    at.of(len + 1)
}

/// The byte ranges of the lines of `bytes`, each with its `\n`.
fn lines(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < bytes.len() {
        out.push(start..bytes.len());
    }
    out
}

impl Edit {
    /// `bytes` with this edit made.
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        match self {
            Edit::FlipBit(at, bit) => {
                if len > 0 {
                    bytes[at.of(len)] ^= 1 << bit;
                }
            }
            Edit::Insert(at, what) => {
                let at = position(at, len);
                let value = NASTY[what.of(NASTY.len())];
                bytes.splice(at..at, value.iter().copied());
            }
            Edit::Delete(at, n) => {
                let at = position(at, len);
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Duplicate(at, n) => {
                let at = position(at, len);
                let run = bytes[at..(at + n).min(len)].to_vec();
                let end = at + run.len();
                bytes.splice(end..end, run);
            }
            Edit::Number(at, what) => {
                let from = position(at, len);
                let value = NASTY[what.of(NASTY.len())];
                let Some(start) = bytes[from..].iter().position(u8::is_ascii_digit) else {
                    bytes.splice(from..from, value.iter().copied());
                    return;
                };
                let start = from + start;
                let end = bytes[start..]
                    .iter()
                    .position(|b| !(b.is_ascii_digit() || *b == b'.'))
                    .map_or(len, |e| start + e);
                bytes.splice(start..end, value.iter().copied());
            }
            Edit::Long(at, byte, n) => {
                let at = position(at, len);
                bytes.splice(at..at, std::iter::repeat_n(*byte, *n));
            }
            Edit::DeleteLine(at) => {
                let lines = lines(bytes);
                if !lines.is_empty() {
                    bytes.drain(lines[at.of(lines.len())].clone());
                }
            }
            Edit::DuplicateLine(at) => {
                let lines = lines(bytes);
                if !lines.is_empty() {
                    let line = lines[at.of(lines.len())].clone();
                    let mut copy = bytes[line.clone()].to_vec();
                    if copy.last() != Some(&b'\n') {
                        copy.insert(0, b'\n');
                    }
                    bytes.splice(line.end..line.end, copy);
                }
            }
            Edit::SwapLines(a, b) => {
                let lines = lines(bytes);
                if lines.len() > 1 {
                    let (a, b) = (a.of(lines.len()), b.of(lines.len()));
                    let (a, b) = (a.min(b), a.max(b));
                    if a != b {
                        let mut out = Vec::with_capacity(len + 1);
                        for (i, range) in lines.iter().enumerate() {
                            let take = match i {
                                i if i == a => &lines[b],
                                i if i == b => &lines[a],
                                _ => range,
                            };
                            out.extend_from_slice(&bytes[take.clone()]);
                            if out.last() != Some(&b'\n') {
                                out.push(b'\n');
                            }
                        }
                        *bytes = out;
                    }
                }
            }
        }
    }
}

/// `valid` with one to four [`Edit`]s made, in order.
pub fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(edit(), 1..=4).prop_map(move |edits| {
        let mut bytes = valid.clone();
        for e in &edits {
            e.apply(&mut bytes);
        }
        bytes
    })
}

/// [`mutated`] as text: bytes that are not UTF-8 become U+FFFD, the way a reader of text files
/// sees them.
pub fn mutated_text(valid: &str) -> impl Strategy<Value = String> {
    mutated(valid.as_bytes().to_vec()).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Text made of the characters that mean something to TOML, JSON and HTTP, with letters and
/// digits between them: random input that at least looks like input.
pub fn random_text() -> impl Strategy<Value = String> {
    "[a-z0-9_ =\\[\\]{}\",.:#'\\-\\n\\r\\t\\\\/*%@\u{0}\u{e9}\u{fffd}]{0,200}"
}

/// Values a JSON node can be swapped for: each kind of the wrong kind, numbers out of every
/// range, strings empty, very long, or holding line ends and NUL.
pub fn nasty_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(1.5),
            json!(-0.5),
            json!(1e300),
            json!(-1e300),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(f64::MAX),
            json!(f64::MIN_POSITIVE),
            json!(100.000001),
            json!(4294967296u64),
        ]),
        any::<i64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            "",
            " ",
            "\r\nX-Injected: 1",
            "\0",
            "a\nb",
            "*",
            "../..",
            "10.0.0.0/33",
            "::ffff:1.2.3.4",
            "{}",
            "(",
            "[a-",
            "\u{202e}",
            "1e309",
            "NaN",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        (1usize..200_000).prop_map(|n| Value::String("x".repeat(n))),
        Just(json!([])),
        Just(json!({})),
        Just(json!([null, 1, "a", {}])),
        Just(json!({"unknown": 1})),
    ]
}

/// A change to one node of a JSON tree, the node picked by its number in a walk of the tree.
#[derive(Debug, Clone)]
pub enum JsonEdit {
    /// The node becomes this value.
    Replace(At, serde_json::Value),
    /// The node (an object's field or an array's element) is removed.
    Remove(At),
    /// The node is repeated: an array element twice, or an object field copied under a new key.
    Duplicate(At),
    /// The node becomes another value of its own kind (a string another string, a number
    /// another number), the second [`At`] picking which: input that gets past the types to the
    /// checks of what the values mean.
    SameKind(At, At),
}

/// Strings that mean something somewhere in a policy or a request: names of what exists,
/// header names, CIDRs, regexes, durations, and hostile text.
const STRINGS: &[&str] = &[
    "",
    "v1",
    "v2",
    "web",
    "canary",
    "stable",
    "prod",
    "beta",
    "X-Env",
    "x-user-id",
    "uid",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "::/0",
    "1.2.3.4",
    "not-an-ip",
    "(",
    "^a+$",
    ".*",
    "1m",
    "0s",
    "100y",
    "1h",
    "a\r\nb",
    "\0",
    " ",
    "*.example.com",
    "/api",
    "//",
    "{}",
    "idStart",
    "\u{202e}",
    "9223372036854775808",
];

/// Numbers at and past the edges of percentages, integer types and floats.
const NUMBERS: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.005,
    0.01,
    33.333,
    49.995,
    50.0,
    99.99,
    100.0,
    100.01,
    101.0,
    1e15,
    9.007199254740993e15,
    1.8446744073709552e19,
    -9.3e18,
    1e300,
    f64::MIN_POSITIVE,
];

/// Any one [`JsonEdit`].
pub fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        4 => (any::<At>(), nasty_json()).prop_map(|(at, v)| JsonEdit::Replace(at, v)),
        2 => any::<At>().prop_map(JsonEdit::Remove),
        1 => any::<At>().prop_map(JsonEdit::Duplicate),
        6 => (any::<At>(), any::<At>()).prop_map(|(at, what)| JsonEdit::SameKind(at, what)),
    ]
}

/// How many nodes `value` has, itself included.
fn count(value: &serde_json::Value) -> usize {
    1 + match value {
        serde_json::Value::Array(a) => a.iter().map(count).sum(),
        serde_json::Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// Applies `edit` to the node numbered `target` under `value` (whose own number is 0); the
/// numbers of the nodes walked so far are counted down in `target`.
fn edit_node(value: &mut serde_json::Value, target: &mut usize, edit: &JsonEdit) -> bool {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            for i in 0..items.len() {
                *target -= 1;
                if *target == 0 {
                    match edit {
                        JsonEdit::Replace(_, v) => items[i] = v.clone(),
                        JsonEdit::Remove(_) => {
                            items.remove(i);
                        }
                        JsonEdit::Duplicate(_) => {
                            let copy = items[i].clone();
                            items.insert(i, copy);
                        }
                        // Made by `apply` through `node_mut`.
                        JsonEdit::SameKind(..) => {}
                    }
                    return true;
                }
                if edit_node(&mut items[i], target, edit) {
                    return true;
                }
            }
            false
        }
        Value::Object(fields) => {
            let keys: Vec<String> = fields.keys().cloned().collect();
            for key in keys {
                *target -= 1;
                if *target == 0 {
                    match edit {
                        JsonEdit::Replace(_, v) => {
                            fields.insert(key, v.clone());
                        }
                        JsonEdit::Remove(_) => {
                            fields.remove(&key);
                        }
                        JsonEdit::Duplicate(_) => {
                            let copy = fields[&key].clone();
                            fields.insert(format!("{key}2"), copy);
                        }
                        JsonEdit::SameKind(..) => {}
                    }
                    return true;
                }
                if edit_node(
                    fields.get_mut(&key).expect("a key just listed"),
                    target,
                    edit,
                ) {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// The node numbered `target` in a walk of `value` (itself 0).
fn node_mut<'v>(
    value: &'v mut serde_json::Value,
    target: &mut usize,
) -> Option<&'v mut serde_json::Value> {
    if *target == 0 {
        return Some(value);
    }
    let children: Vec<&'v mut serde_json::Value> = match value {
        serde_json::Value::Array(items) => items.iter_mut().collect(),
        serde_json::Value::Object(fields) => fields.values_mut().collect(),
        _ => return None,
    };
    for child in children {
        *target -= 1;
        if let Some(found) = node_mut(child, target) {
            return Some(found);
        }
    }
    None
}

impl JsonEdit {
    /// `value` with this edit made; the root can only be replaced.
    pub fn apply(&self, value: &mut serde_json::Value) {
        if let JsonEdit::SameKind(at, what) = self {
            let mut target = at.of(count(value));
            let Some(node) = node_mut(value, &mut target) else {
                return;
            };
            let replacement = match node {
                serde_json::Value::String(_) => {
                    serde_json::Value::String(STRINGS[what.of(STRINGS.len())].to_string())
                }
                serde_json::Value::Number(n) => {
                    let x = NUMBERS[what.of(NUMBERS.len())];
                    // Integers stay integers where they can, so that integer fields are reached.
                    if n.is_f64() || x.fract() != 0.0 || x.abs() >= 9.2e18 {
                        serde_json::json!(x)
                    } else {
                        serde_json::json!(x as i64)
                    }
                }
                serde_json::Value::Bool(b) => serde_json::Value::Bool(!*b),
                serde_json::Value::Array(items) => {
                    items.clear();
                    return;
                }
                serde_json::Value::Object(_) | serde_json::Value::Null => return,
            };
            *node = replacement;
            return;
        }
        let at = match self {
            JsonEdit::Replace(at, _) | JsonEdit::Remove(at) | JsonEdit::Duplicate(at) => at,
            JsonEdit::SameKind(..) => unreachable!("made above"),
        };
        let mut target = at.of(count(value));
        if target == 0 {
            if let JsonEdit::Replace(_, v) = self {
                *value = v.clone();
            }
            return;
        }
        edit_node(value, &mut target, self);
    }
}

/// `valid` with one to three [`JsonEdit`]s made, in order.
pub fn mutated_json(valid: serde_json::Value) -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec(json_edit(), 1..=3).prop_map(move |edits| {
        let mut value = valid.clone();
        for e in &edits {
            e.apply(&mut value);
        }
        value
    })
}

/// A JSON body: a tree edit of `valid` serialized, or its serialization with byte edits (which
/// may not be JSON at all), or random bytes.
pub fn json_body(valid: serde_json::Value) -> impl Strategy<Value = Vec<u8>> {
    let text = serde_json::to_vec(&valid).expect("a JSON value serializes");
    prop_oneof![
        3 => mutated_json(valid)
            .prop_map(|v| serde_json::to_vec(&v).expect("a JSON value serializes")),
        2 => mutated(text),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn line_edits_keep_the_other_lines() {
        let mut text = b"a\nb\nc".to_vec();
        Edit::SwapLines(At(0usize), At(usize::MAX)).apply(&mut text);
        // `At(usize::MAX)` is the last line, `At(0)` the first.
        assert_eq!(text, b"c\nb\na\n");
        let mut text = b"a\nb\n".to_vec();
        Edit::DuplicateLine(At(0usize)).apply(&mut text);
        assert_eq!(text, b"a\na\nb\n");
        Edit::DeleteLine(At(0usize)).apply(&mut text);
        assert_eq!(text, b"a\nb\n");
    }

    #[test]
    fn a_number_edit_replaces_the_whole_number() {
        let mut text = b"port = 8080\n".to_vec();
        let huge = NASTY.iter().position(|v| *v == b"1e309").unwrap();
        Edit::Number(At(0usize), index_of(huge)).apply(&mut text);
        assert_eq!(text, b"port = 1e309\n");
    }

    /// The [`At`] that picks element `i` of [`NASTY`].
    fn index_of(i: usize) -> At {
        // `At::of(len)` scales its 64-bit value into 0..len.
        let step = usize::MAX / NASTY.len();
        At(i * step + step / 2)
    }

    #[test]
    fn json_edits_reach_every_node() {
        let valid = json!({"a": [1, {"b": 2}], "c": "d"});
        let n = count(&valid);
        assert_eq!(n, 6);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..n {
            let mut v = valid.clone();
            let step = usize::MAX / n;
            JsonEdit::Replace(At(i * step + step / 2), json!("X")).apply(&mut v);
            assert_ne!(v, valid, "node {i}");
            seen.insert(v.to_string());
        }
        assert_eq!(seen.len(), n, "each number names another node");
    }
}
