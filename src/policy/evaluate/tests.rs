//! Tests of [`Policy::evaluate`]: each kind of source and test, splits, overrides, store lookups and
//! routing, on small policies written as an operator would.

use super::super::{compile, model::PolicyDoc, NoLookups};
use super::*;
use http::HeaderMap;
use std::collections::HashMap;

const UPSTREAMS: &[&str] = &["prod", "gray"];

fn policy(toml_text: &str) -> Policy {
    let doc: PolicyDoc = toml::from_str(toml_text).expect("policy parses");
    compile(&doc, UPSTREAMS).expect("policy compiles")
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
            client_key: None,
            headers: &self.headers,
            random: self.random,
            now: 0,
            https: false,
            followed: None,
        }
    }
}

fn version(p: &Policy, r: &Req) -> String {
    match p.evaluate(&r.facts(), &NoLookups) {
        Evaluation::Decided(d) => d.version().to_string(),
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
        (d.version(), d.upstream, d.reason.clone()),
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
    assert_eq!((d.version(), d.reason.clone()), ("v1", Reason::Default));

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
    assert_eq!(decision(&p, &r, &known).version(), "v2");
    known.0.insert(
        ("redis".into(), "TOKEN_abc".into()),
        LookupAnswer::Value("9000".into()),
    );
    assert_eq!(decision(&p, &r, &known).version(), "v1");
    known
        .0
        .insert(("redis".into(), "TOKEN_abc".into()), LookupAnswer::Absent);
    assert_eq!(decision(&p, &r, &known).version(), "v1");
    // no header: no lookup at all
    assert_eq!(decision(&p, &req(), &known).version(), "v1");
}

#[test]
fn a_client_key_replaces_the_client_ip_in_lookups_only() {
    // The original client IP mode looks a multi-hop X-Forwarded-For up whole.
    let p = web(&format!(
        "{RULE}when = {{ client_ip = true, lookup = {{ list = \"gray_ips\" }}, equals = \"1\" }}\n\
         [[services.rules]]\nname = \"office\"\nversion = \"v2\"\nwhen = {{ client_ip = true, cidr = [\"10.0.0.7/32\"] }}\n"
    ));
    let r = req().ip("10.0.0.7");
    let facts = RequestFacts {
        client_key: Some("10.0.0.7, 10.0.0.9"),
        ..r.facts()
    };
    let mut known = Map(HashMap::new());
    assert_eq!(
        p.evaluate(&facts, &known),
        Evaluation::NeedLookup {
            list: "gray_ips".into(),
            key: "10.0.0.7, 10.0.0.9".into()
        }
    );
    // Not on the list under the whole header: the `cidr` rule still sees the address.
    known.0.insert(
        ("gray_ips".into(), "10.0.0.7, 10.0.0.9".into()),
        LookupAnswer::Absent,
    );
    let Evaluation::Decided(d) = p.evaluate(&facts, &known) else {
        panic!("decided")
    };
    assert_eq!(d.reason.to_string(), "rule:office");
    // Without a client key, the address's text is the key.
    assert_eq!(
        p.evaluate(&r.facts(), &known),
        Evaluation::NeedLookup {
            list: "gray_ips".into(),
            key: "10.0.0.7".into()
        }
    );
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
        assert_eq!(decision(&p, &r, &known).version(), *want, "range {range:?}");
    }
    set(
        &mut known,
        "Grayscale_Range",
        Some(r#"{"idStart":1,"idEnd":5000}"#),
    );
    set(&mut known, "TOKEN_abc", Some("12x"));
    assert_eq!(decision(&p, &r, &known).version(), "v1");
    set(&mut known, "TOKEN_abc", None);
    assert_eq!(decision(&p, &r, &known).version(), "v1");
    assert_eq!(decision(&p, &req(), &known).version(), "v1");
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
    assert_eq!(decision(&p, &r, &known).version(), "v1");
    let known = Map(HashMap::from([(
        ("ips".into(), "192.0.2.1".into()),
        LookupAnswer::Absent,
    )]));
    assert_eq!(decision(&p, &r, &known).version(), "v2");
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
            Evaluation::Decided(d) => Some(d.service().to_string()),
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
fn a_route_host_with_a_trailing_dot_is_the_host_without_it() {
    // Requests arrive with the trailing dot stripped at the edge; the route is written either way.
    let p = policy(
        "[[routes]]\nhosts = [\"api.example.com.\", \"*.shop.test.\"]\nservice = \"a\"\n\
         [[services]]\nname = \"a\"\nstable = \"s\"\nversions = { s = \"prod\" }\n",
    );
    let route = |host: &'static str| {
        let mut r = req();
        r.host = host;
        matches!(p.evaluate(&r.facts(), &NoLookups), Evaluation::Decided(_))
    };
    assert!(route("api.example.com"));
    assert!(route("eu.shop.test:8080"));
    assert!(!route("example.com"));
}

/// A spread of request random numbers, as the data plane's generator gives.
fn spread(i: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
}

const COOKIE_SPLIT: &str =
    "[services.split]\nweights = { v2 = 10 }\nsticky_cookie = { name = \"gb\" }\n";

/// The visitor's first request (no cookie): the version, and the cookie it is given.
fn first_visit(p: &Policy, random: u64) -> (String, String) {
    let r = Req { random, ..req() };
    let d = decision(p, &r, &NoLookups);
    assert!(
        matches!(d.reason, Reason::Bucket { new: true, .. }),
        "{:?}",
        d.reason
    );
    assert_eq!(d.note, Some(Note::BucketCookieNew));
    let set = d
        .set_cookie
        .clone()
        .expect("a new visitor gets a bucket cookie");
    let (pair, attributes) = set.split_once(';').unwrap();
    assert_eq!(attributes, " Max-Age=86400; Path=/; HttpOnly; SameSite=Lax");
    (d.version().to_string(), pair.to_string())
}

fn with_cookie(p: &Policy, cookie: &str, random: u64) -> Decision {
    decision(
        p,
        &Req { random, ..req() }.header("cookie", cookie),
        &NoLookups,
    )
}

#[test]
fn anonymous_visitors_land_at_the_weight_and_keep_their_version_by_their_bucket_cookie() {
    let p = web(COOKIE_SPLIT);
    let mut canary = 0;
    for client in 0..10_000u64 {
        let (version, cookie) = first_visit(&p, spread(client));
        canary += u32::from(version == "v2");
        for request in 0..20u64 {
            // Each request draws another random number: the cookie, not the draw, decides.
            let d = with_cookie(&p, &cookie, spread(1_000_000 + client * 20 + request));
            assert_eq!(
                *d.version(),
                *version,
                "client {client} request {request} flipped"
            );
            assert!(matches!(d.reason, Reason::Bucket { new: false, .. }));
            assert_eq!(
                (d.set_cookie, d.note),
                (None, None),
                "set only when missing"
            );
        }
    }
    // 10% within one point.
    assert!(
        (900..=1100).contains(&canary),
        "{canary} of 10000 on the canary"
    );
}

#[test]
fn a_wider_weight_moves_only_new_buckets_and_a_rollback_moves_everyone_back() {
    let clients: Vec<(String, String)> = (0..2_000)
        .map(|c| first_visit(&web(COOKIE_SPLIT), spread(c)))
        .collect();
    let wider = web(&COOKIE_SPLIT.replace("v2 = 10", "v2 = 30"));
    let back = web(&COOKIE_SPLIT.replace("v2 = 10", "v2 = 0"));
    let mut now_canary = 0;
    for (version, cookie) in &clients {
        let d = with_cookie(&wider, cookie, 1);
        if version == "v2" {
            assert_eq!(
                d.version(),
                "v2",
                "an earlier canary client stays on the canary"
            );
        }
        now_canary += u32::from(d.version() == "v2");
        assert_eq!(with_cookie(&back, cookie, 1).version(), "v1");
    }
    assert!(
        (500..=700).contains(&now_canary),
        "{now_canary} of 2000 at 30%"
    );
}

#[test]
fn a_signed_bucket_cookie_is_kept_and_a_forged_or_unsigned_one_replaced() {
    let p = web(&COOKIE_SPLIT.replace(
        "{ name = \"gb\" }",
        "{ name = \"gb\", key = \"0123456789abcdef-key\", max_age = \"2h\", secure = true }",
    ));
    let d = decision(&p, &Req { random: 5, ..req() }, &NoLookups);
    let set = d.set_cookie.clone().unwrap();
    assert!(
        set.ends_with("; Max-Age=7200; Path=/; HttpOnly; SameSite=Lax; Secure"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap();
    let kept = with_cookie(&p, cookie, 9);
    assert_eq!(
        (kept.set_cookie.clone(), kept.version()),
        (None, d.version())
    );

    let id = cookie.trim_start_matches("gb=").split('.').next().unwrap();
    for forged in [
        format!("gb={id}"),
        format!("gb={id}.0123"),
        "gb=00000000000000ff.abcd".into(),
    ] {
        let d = with_cookie(&p, &forged, 11);
        assert_eq!(d.note, Some(Note::BucketCookieReplaced), "{forged}");
        let new = d.set_cookie.expect("replaced");
        assert!(!new.starts_with(&forged), "{new}");
    }
}

#[test]
fn the_split_identity_comes_first_and_the_cookie_covers_its_absence() {
    let p = web(&COOKIE_SPLIT.replace(
        "weights = { v2 = 10 }",
        "weights = { v2 = 10 }\nby = { header = \"x-uid\" }",
    ));
    let d = decision(&p, &req().header("x-uid", "42"), &NoLookups);
    assert!(matches!(d.reason, Reason::Split { sticky: true, .. }));
    assert_eq!(d.set_cookie, None);
    let d = decision(&p, &req(), &NoLookups);
    assert!(matches!(d.reason, Reason::Bucket { new: true, .. }));
    // With an identity but no cookie settings, a request without it stays on stable.
    let p = web("[services.split]\nweights = { v2 = 100 }\nby = { header = \"x-uid\" }\n");
    assert_eq!(decision(&p, &req(), &NoLookups).reason, Reason::Default);
}

#[test]
fn bad_bucket_cookie_settings_are_refused_with_their_field() {
    for (cookie, message) in [
        (
            "{ name = \"a b\" }",
            "services[0].split.sticky_cookie.name: \"a b\" is not a cookie name",
        ),
        (
            "{ path = \"x\" }",
            "services[0].split.sticky_cookie.path: \"x\" is not a cookie path",
        ),
        (
            "{ key = \"short\" }",
            "services[0].split.sticky_cookie.key: needs at least 16 characters",
        ),
        (
            "{ max_age = \"0s\" }",
            "services[0].split.sticky_cookie.max_age: must be at least one second",
        ),
        (
            "{ same_site = \"None\", secure = false }",
            "services[0].split.sticky_cookie.same_site: SameSite=None needs Secure",
        ),
    ] {
        let text = format!(
            "[[routes]]\nservice = \"web\"\n[[services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"prod\", v2 = \"gray\" }}\n[services.split]\nweights = {{ v2 = 10 }}\nsticky_cookie = {cookie}\n"
        );
        let doc: PolicyDoc = toml::from_str(&text).expect(cookie);
        let e = compile(&doc, UPSTREAMS).unwrap_err().to_string();
        assert!(e.starts_with(message), "{e}");
    }
}

const GUARDED: &str = "override = { header = \"X-Gray\", version = \"v2\", from = [\"10.0.0.0/8\"], secret = \"0123456789abcdef\" }\n";

#[test]
fn a_guarded_override_counts_only_from_its_networks_with_its_secret() {
    let p = web(GUARDED);
    let tester = || req().ip("10.1.2.3");
    let d = decision(
        &p,
        &tester().header("x-gray", "always:0123456789abcdef"),
        &NoLookups,
    );
    assert_eq!((d.version(), d.note), ("v2", None));
    assert!(matches!(d.reason, Reason::Override { .. }));

    for (r, note) in [
        (
            req()
                .ip("192.0.2.1")
                .header("x-gray", "always:0123456789abcdef"),
            Note::OverrideFromOutside,
        ),
        (tester().header("x-gray", "always"), Note::OverrideBadSecret),
        (
            tester().header("x-gray", "always:0123456789abcdeX"),
            Note::OverrideBadSecret,
        ),
    ] {
        let d = decision(&p, &r, &NoLookups);
        assert_eq!(
            (d.version(), d.reason.clone(), d.note),
            ("v1", Reason::Default, Some(note))
        );
    }
    // `never` needs no secret: it only keeps a request on stable.
    let d = decision(&p, &req().header("x-gray", "never"), &NoLookups);
    assert!(matches!(
        d.reason,
        Reason::Override {
            value: OverrideValue::Never
        }
    ));
}

#[test]
fn a_signed_override_value_works_until_its_expiry() {
    let p = web(
        "override = { header = \"X-Gray\", version = \"v2\", key = \"tester-signing-key-1\" }\n",
    );
    let key = token::SigningKey::new("tester-signing-key-1");
    let value = token::override_value(&key, "web", "v2", 1_000);
    let r = req().header("x-gray", &value);
    let at = |now| decision_at(&p, &r, now);
    assert_eq!((at(999).version(), at(999).note), ("v2", None));
    assert_eq!(
        (at(1_001).version(), at(1_001).note),
        ("v1", Some(Note::OverrideExpired))
    );
}

fn decision_at(p: &Policy, r: &Req, now: u64) -> Decision {
    match p.evaluate(&RequestFacts { now, ..r.facts() }, &NoLookups) {
        Evaluation::Decided(d) => d,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_following_service_takes_a_trusted_upstream_choice_that_names_one_of_its_versions() {
    let p = web("follow = true\n");
    let r = req();
    let followed = |name| match p.evaluate(
        &RequestFacts {
            followed: Some(name),
            ..r.facts()
        },
        &NoLookups,
    ) {
        Evaluation::Decided(d) => d,
        other => panic!("{other:?}"),
    };
    let d = followed("v2");
    assert_eq!(
        (d.version(), d.reason.clone(), d.note),
        ("v2", Reason::Followed, None)
    );
    let d = followed("v9");
    assert_eq!(
        (d.version(), d.reason.clone(), d.note),
        ("v1", Reason::Default, Some(Note::FollowUnknownVersion))
    );
    // A service that does not follow ignores it.
    let p = web("");
    match p.evaluate(
        &RequestFacts {
            followed: Some("v2"),
            ..r.facts()
        },
        &NoLookups,
    ) {
        Evaluation::Decided(d) => assert_eq!((d.version(), d.note), ("v1", None)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bucket_cookie_is_secure_over_https_unless_told_otherwise() {
    let set_cookie = |extra: &str, https: bool| {
        let p =
            web(&COOKIE_SPLIT.replace("{ name = \"gb\" }", &format!("{{ name = \"gb\"{extra} }}")));
        match p.evaluate(
            &RequestFacts {
                https,
                ..req().facts()
            },
            &NoLookups,
        ) {
            Evaluation::Decided(d) => d.set_cookie.unwrap(),
            other => panic!("{other:?}"),
        }
    };
    assert!(set_cookie("", true).ends_with("; SameSite=Lax; Secure"));
    assert!(set_cookie("", false).ends_with("; SameSite=Lax"));
    assert!(set_cookie(", secure = false", true).ends_with("; SameSite=Lax"));
    let strict = set_cookie(
        ", same_site = \"Strict\", http_only = false, path = \"/shop\"",
        false,
    );
    assert!(
        strict.ends_with("; Max-Age=86400; Path=/shop; SameSite=Strict"),
        "{strict}"
    );
    // SameSite=None is dropped by browsers without Secure: always Secure.
    assert!(set_cookie(", same_site = \"None\"", false).ends_with("; SameSite=None; Secure"));
}

/// A range document nested far deeper than any JSON reader should follow, in the field that
/// is skipped, in a bound and as the whole document: no match, and no stack overflow (the
/// reader keeps serde_json's recursion limit, as the `Value` reading did).
#[test]
fn a_deeply_nested_range_document_matches_nothing() {
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    for doc in [
        format!(r#"{{"idStart":1,"idEnd":5000,"x":{deep}}}"#),
        format!(r#"{{"idStart":{deep},"idEnd":5000}}"#),
        deep.clone(),
        format!(
            r#"{{"idStart":1,"idEnd":5000,"x":{}}}"#,
            "{\"a\":".repeat(100_000)
        ),
    ] {
        assert!(
            !super::in_stored_range(&doc, "idStart", "idEnd", true, "1234"),
            "{}",
            &doc[..40]
        );
    }
    assert!(super::in_stored_range(
        r#"{"idStart":1,"idEnd":5000,"x":[[[1]]]}"#,
        "idStart",
        "idEnd",
        true,
        "1234"
    ));
}
