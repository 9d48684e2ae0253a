//! The policy core on generated bad input: policy documents with one node swapped for a value of
//! the wrong kind or size (as a store or an admin client could hand them in), requests with
//! hostile values, and store values (user ids, the `Grayscale_Range` JSON) taken apart.
//!
//! What must hold for any input: compile answers a policy or a [`CompileError`] whose path names a
//! field the document has; a compiled policy evaluates every request without a panic, and the
//! indexed evaluation agrees with the plain one (`oracle`) whatever the store holds; a stored
//! range matches exactly the numbers between its bounds, and nothing when it is not a range.

use super::compile::compile;
use super::evaluate::in_stored_range;
use super::path::Segment;
use super::request::{parse_integer, parse_number};
use super::{LookupAnswer, Lookups, PolicyDoc, RequestFacts};
use crate::mutate::{assert_reaches, bounded, mutated, mutated_json, sample, NASTY};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::net::IpAddr;

const UPSTREAMS: &[&str] = &["prod", "canary"];

/// A policy with every kind of source, test, combination, override and split.
const VALID: &str = r#"
[[routes]]
name = "api"
hosts = ["api.example.com", "*.example.org"]
path_prefix = "/api"
service = "client"

[[routes]]
service = "client"

[[services]]
name = "client"
stable = "prod"
versions = { prod = "prod", canary = "canary" }
override = { header = "X-Gray", version = "canary" }

[[services.rules]]
name = "gray-ips"
version = "canary"
when = { client_ip = true, lookup = { list = "gray_ips" }, equals = "1" }

[[services.rules]]
name = "office"
version = "canary"
when = { cidr = ["192.168.0.0/16", "2001:db8::/32"] }

[[services.rules]]
name = "users"
version = "canary"
when = { any = [{ header = "X-Uid", range = { start = 1, end = 5000, exclusive = true } }, { cookie = "uid", ids = [7, -3, 9007199254740993] }, { query = "uid", suffix = ["00", "7"] }, { header = "X-Uid", modulo = { divisor = 10, remainders = [0, 9] } }] }

[[services.rules]]
name = "token-ids"
version = "canary"
when = { header = "X-Token", lookup = { list = "users", key = "token:{}" }, ids = [42, 4242] }

[[services.rules]]
name = "ranged"
version = "canary"
when = { header = "X-Uid", range_from = { list = "users", key = "Grayscale_Range", start = "idStart", end = "idEnd" } }

[[services.rules]]
name = "beta"
version = "canary"
when = { all = [{ header = "User-Agent", regex = "^Mozilla/5\\.0 .*beta" }, { not = { header = "X-Env", in = ["prod", "staging"] } }, { header = "X-Id", percent = 12.5, salt = "beta" }, { cookie = "beta", present = true }] }

[services.split]
weights = { canary = 2.5 }
by = { header = "X-User" }
salt = "client-2"
"#;

fn valid() -> Value {
    let doc: PolicyDoc = toml::from_str(VALID).expect("the valid policy parses");
    serde_json::to_value(doc).expect("a policy serializes")
}

/// Whether `doc` has the field at `path`: every segment walks into it.
fn has_field(doc: &Value, path: &[Segment]) -> bool {
    let mut node = doc;
    for seg in path {
        let next = match (seg, node) {
            (Segment::Field(k), Value::Object(fields)) => fields.get(k),
            (Segment::Index(i), Value::Array(items)) => items.get(*i),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    true
}

/// A value a store may hold: a user id or a range document taken apart, or hostile text.
fn stored_value() -> impl Strategy<Value = String> {
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    prop_oneof![
        3 => mutated(br#"{"idStart":1,"idEnd":5000}"#.to_vec()).prop_map(text),
        2 => mutated(b"4242".to_vec()).prop_map(text),
        1 => prop::sample::select(NASTY).prop_map(move |b| text(b.to_vec())),
        1 => Just("1".to_string()),
    ]
}

/// Store answers picked by the key: values from `values`, absent or unavailable.
struct Stored(Vec<String>);

impl Lookups for Stored {
    fn get(&self, list: &str, key: &str) -> LookupAnswer {
        let h = xxhash_rust::xxh3::xxh3_64(format!("{list}\0{key}").as_bytes()) as usize;
        match h % (self.0.len() + 2) {
            0 => LookupAnswer::Absent,
            1 => LookupAnswer::Unavailable,
            i => LookupAnswer::Value(self.0[i - 2].as_str().into()),
        }
    }
}

/// A request header value: a hostile value, a number near a bound, or one of the words the
/// policy tests for.
fn request_value() -> impl Strategy<Value = HeaderValue> {
    let words = vec![
        "beta",
        "prod",
        "1",
        "7",
        "42",
        "4242",
        "5000",
        "4999",
        "-3",
        "0x10",
        " 7 ",
        "1e3",
        "always",
        "never",
        "9007199254740993",
        "Mozilla/5.0 x beta",
    ];
    prop_oneof![
        prop::sample::select(words).prop_map(HeaderValue::from_static),
        prop::sample::select(NASTY)
            .prop_filter_map("a header value", |b| { HeaderValue::from_bytes(b).ok() }),
    ]
}

fn request_headers() -> impl Strategy<Value = HeaderMap> {
    let names = vec![
        "x-uid",
        "x-token",
        "x-gray",
        "x-env",
        "x-id",
        "x-user",
        "user-agent",
        "cookie",
    ];
    prop::collection::vec((prop::sample::select(names), request_value()), 0..6).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(HeaderName::from_static(name), value);
        }
        h
    })
}

#[test]
fn the_policy_mutated_is_valid() {
    let doc: PolicyDoc = serde_json::from_value(valid()).unwrap();
    compile(&doc, UPSTREAMS).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_mutations_reach_every_answer() {
    let docs = sample(mutated_json(valid()), 400);
    let (mut shapeless, mut refused, mut compiled) = (0, 0, 0);
    for doc in docs {
        match serde_json::from_value::<PolicyDoc>(doc) {
            Err(_) => shapeless += 1,
            Ok(doc) => match compile(&doc, UPSTREAMS) {
                Err(_) => refused += 1,
                Ok(_) => compiled += 1,
            },
        }
    }
    assert_reaches(
        400,
        &[
            ("not a policy", shapeless),
            ("refused by compile", refused),
            ("compiled", compiled),
        ],
    );
}

proptest! {
    #![proptest_config(bounded(256, 10_000))]

    #[test]
    fn a_mutated_policy_compiles_or_is_refused_at_a_field_it_has(
        doc in mutated_json(valid()),
        hosts in prop::collection::vec(prop::sample::select(vec![
            "api.example.com", "x.example.org", "API.EXAMPLE.COM:8080", "", "[::1]:80", "example.com",
        ]), 1..3),
        paths in prop::collection::vec(prop::sample::select(vec![
            "/", "/api", "/api/", "/apix", "/api/v1?x", "//api", "",
        ]), 1..3),
        query in prop::option::of(prop::sample::select(vec![
            "uid=7", "uid=%ff", "uid", "uid=1&uid=2", "&&=", "uid=%2",
        ])),
        headers in request_headers(),
        stored in prop::collection::vec(stored_value(), 0..4),
        client_ip in prop::sample::select(vec!["192.168.1.1", "2001:db8::1", "10.0.0.1", "::ffff:192.168.0.9"]),
    ) {
        let Ok(policy_doc) = serde_json::from_value::<PolicyDoc>(doc.clone()) else {
            return Ok(());
        };
        let policy = match compile(&policy_doc, UPSTREAMS) {
            Ok(policy) => policy,
            Err(e) => {
                prop_assert!(!e.message.trim().is_empty(), "{}", e);
                // The path names a field of the document as it was given (re-serialized, so
                // that defaults and renames are the model's).
                let given = serde_json::to_value(&policy_doc).expect("a policy serializes");
                prop_assert!(has_field(&given, e.path.segments()), "{} names no field of {}", e, given);
                return Ok(());
            }
        };
        let client_ip: IpAddr = client_ip.parse().expect("an address");
        let lookups = Stored(stored);
        for host in &hosts {
            for path in &paths {
                let facts = RequestFacts {
                    host,
                    path,
                    query,
                    client_ip,
                    client_key: None,
                    headers: &headers,
                    random: 7,
                    now: 0,
                    https: false,
                    followed: None,
                };
                let fast = policy.evaluate(&facts, &lookups);
                let plain = policy.evaluate_linear(&facts, &lookups);
                prop_assert_eq!(fast, plain, "{} {} {:?}", host, path, headers);
            }
        }
    }

    #[test]
    fn a_stored_range_holds_exactly_the_numbers_between_its_bounds(
        lo in -10_000i64..10_000,
        hi in -10_000i64..10_000,
        n in -10_001i64..10_001,
        lo_text in any::<bool>(),
        hi_text in any::<bool>(),
        exclusive in any::<bool>(),
        padded in any::<bool>(),
    ) {
        // Bounds written as numbers or numeric strings, as the original's `tonumber` reads them.
        let bound = |v: i64, text: bool| if text { json!(format!(" {v} ")) } else { json!(v) };
        let doc = json!({"idStart": bound(lo, lo_text), "idEnd": bound(hi, hi_text)}).to_string();
        let value = if padded { format!(" {n}\t") } else { n.to_string() };
        let want = if exclusive { lo < n && n < hi } else { lo <= n && n <= hi };
        prop_assert_eq!(in_stored_range(&doc, "idStart", "idEnd", exclusive, &value), want, "{} {}", doc, value);
    }

    /// The in-place reader of a stored range against the reading it replaced: the whole
    /// document as a `serde_json::Value`, its two bounds taken from that. Documents: the range
    /// with bytes edited, the range with its JSON edited (values swapped for other kinds,
    /// fields added or dropped), and objects whose fields repeat, nest or are escaped.
    #[test]
    fn a_stored_range_reads_as_the_whole_document_would(
        doc in prop_oneof![
            3 => stored_value(),
            3 => mutated_json(json!({"idStart": 1, "idEnd": 5000, "note": [1, {"a": null}]}))
                .prop_map(|v| v.to_string()),
            2 => prop::collection::vec(
                (
                    prop::sample::select(vec!["idStart", "idEnd", "id\\u0053tart", "x"]),
                    prop::sample::select(vec![
                        "1", "-3", "4.5e3", "\" 7 \"", "\"x\"", "null", "true", "[1,2]",
                        "{\"idStart\":2}", "1e999", "18446744073709551616",
                    ]),
                ),
                0..5,
            )
            .prop_map(|fields| {
                let body: Vec<String> =
                    fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ],
        n in -10i64..6000,
        exclusive in any::<bool>(),
    ) {
        let value = n.to_string();
        let whole = |doc: &str| -> bool {
            let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(doc) else {
                return false;
            };
            let bound = |name: &str| match fields.get(name)? {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => parse_number(s),
                _ => None,
            };
            let (Some(lo), Some(hi), Some(n)) = (bound("idStart"), bound("idEnd"), parse_number(&value))
            else {
                return false;
            };
            if exclusive { lo < n && n < hi } else { lo <= n && n <= hi }
        };
        prop_assert_eq!(
            in_stored_range(&doc, "idStart", "idEnd", exclusive, &value),
            whole(&doc),
            "{} {}",
            doc,
            value
        );
    }

    #[test]
    fn a_stored_value_taken_apart_matches_only_when_it_is_a_range(
        doc in stored_value(),
        value in stored_value(),
        exclusive in any::<bool>(),
    ) {
        let matched = in_stored_range(&doc, "idStart", "idEnd", exclusive, &value);
        if matched {
            // The slow, obvious reading: a JSON object with both bounds as numbers.
            let fields: serde_json::Map<String, Value> =
                serde_json::from_str(&doc).expect("a range that matched is a JSON object");
            let bound = |name: &str| match &fields[name] {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => parse_number(s),
                _ => None,
            };
            let (lo, hi, n) = (bound("idStart"), bound("idEnd"), parse_number(&value));
            prop_assert!(lo.is_some() && hi.is_some() && n.is_some(), "{} {}", doc, value);
        }
        // An id is a number without a fraction, the same as the number read.
        if let Some(id) = parse_integer(&value) {
            let n = parse_number(&value).expect("an id is a number");
            prop_assert!(n.is_finite() && n.fract() == 0.0, "{:?}: {} from {}", value, id, n);
            prop_assert!((n - id as f64).abs() <= n.abs() * f64::EPSILON, "{:?}: {} from {}", value, id, n);
        }
        if let Some(n) = parse_number(&value) {
            prop_assert!(n.is_finite(), "{:?}: {}", value, n);
        }
    }
}
