//! Micro-benchmarks of the pure policy core: one decision with 10 and with 1,000 rules, a CIDR
//! lookup among one million networks, the sticky hash bucketing, and the memcached key of a
//! client as it is and escaped as the original's client escapes it (`key_escape`), and a lookup in
//! the embedded store's in-memory list of one million IP addresses ([`CompactList`]) beside the
//! plain string map it replaced.
//! `cargo bench --bench policy`; the figures go to docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use graygate::policy::{
    bucket_of, compile, Evaluation, IpTable, NoLookups, PolicyDoc, RequestFacts,
};
use graygate::store::compact::CompactList;
use graygate::store::KeyEscape;
use http::HeaderMap;
use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

/// A service whose `rules` rules each test a different header value, the last one a range; the
/// request matches none of them, so a decision walks every rule (the worst case), then the split.
fn policy_text(rules: usize) -> String {
    let mut text = String::from(
        "[[routes]]\nservice = \"web\"\n[[services]]\nname = \"web\"\nstable = \"v1\"\n\
         versions = { v1 = \"prod\", v2 = \"gray\" }\noverride = { header = \"x-gray\", version = \"v2\" }\n",
    );
    for i in 0..rules {
        let when = match i % 4 {
            0 => format!("{{ header = \"x-env\", equals = \"env-{i}\" }}"),
            1 => format!("{{ cookie = \"team\", in = [\"t{i}\", \"u{i}\"] }}"),
            2 => format!("{{ cidr = [\"10.{}.{}.0/24\"] }}", (i / 256) % 256, i % 256),
            _ => format!(
                "{{ header = \"x-uid\", range = {{ start = {}, end = {} }} }}",
                i * 1000,
                i * 1000 + 10
            ),
        };
        text.push_str(&format!(
            "[[services.rules]]\nname = \"r{i}\"\nversion = \"v2\"\nwhen = {when}\n"
        ));
    }
    text.push_str("[services.split]\nweights = { v2 = 10 }\nby = { header = \"x-uid\" }\n");
    text
}

fn decisions(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-env", "production".parse().unwrap());
    headers.insert("x-uid", "987654321".parse().unwrap());
    headers.insert("cookie", "team=none; session=abc".parse().unwrap());
    headers.insert("user-agent", "bench/1".parse().unwrap());
    let facts = RequestFacts {
        host: "shop.example.com",
        path: "/api/items",
        query: None,
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        client_key: None,
        headers: &headers,
        random: 42,
        now: 0,
        https: false,
        followed: None,
    };
    let mut group = c.benchmark_group("decision");
    for rules in [10usize, 1000] {
        let doc: PolicyDoc = toml::from_str(&policy_text(rules)).unwrap();
        let policy = compile(&doc, &["prod", "gray"]).unwrap();
        assert!(matches!(
            policy.evaluate(&facts, &NoLookups),
            Evaluation::Decided(_)
        ));
        group.bench_with_input(
            BenchmarkId::new("no_rule_matches", rules),
            &rules,
            |b, _| b.iter(|| black_box(policy.evaluate(black_box(&facts), &NoLookups))),
        );
    }
    group.finish();
}

fn cidr_lookup(c: &mut Criterion) {
    // One million /32s and a few hundred wider networks: the shape of a large IP gray list.
    let mut table = IpTable::new();
    for i in 0u32..1_000_000 {
        table.insert(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i * 7)).into());
    }
    for i in 0u32..256 {
        table.insert(format!("172.{}.0.0/16", i % 16 + 16).parse().unwrap());
        table.insert(format!("192.168.{i}.0/24").parse().unwrap());
    }
    let hit = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + 7 * 500_000));
    let miss = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    assert!(table.contains(hit) && !table.contains(miss));
    let mut group = c.benchmark_group("cidr_1m");
    group.bench_function("hit", |b| {
        b.iter(|| black_box(table.contains(black_box(hit))))
    });
    group.bench_function("miss", |b| {
        b.iter(|| black_box(table.contains(black_box(miss))))
    });
    group.finish();
}

/// One million IPv4 keys flagged `1` or `0`, as bench/embedded-1m.toml imports them, looked up by
/// the client IP's text as the request path does: in the compact list, and in the plain
/// `HashMap<String, (Arc<str>, Option<SystemTime>)>` the embedded store kept before, as reference.
fn list_lookup(c: &mut Criterion) {
    let mut compact = CompactList::new();
    let mut plain: HashMap<String, (Arc<str>, Option<SystemTime>)> = HashMap::new();
    let (one, zero): (Arc<str>, Arc<str>) = (Arc::from("1"), Arc::from("0"));
    for i in 0u32..1_000_000 {
        let key = Ipv4Addr::from(0x0A00_0000 + i).to_string();
        let value = if i % 2 == 0 { &one } else { &zero };
        compact.insert(&key, value, None);
        plain.insert(key, (Arc::clone(value), None));
    }
    let hit = Ipv4Addr::from(0x0A00_0000 + 500_001).to_string();
    let miss = "203.0.113.9";
    assert_eq!(compact.get(&hit).as_deref(), Some("0"));
    assert!(compact.get(miss).is_none());
    let mut group = c.benchmark_group("list_1m");
    group.bench_function("compact_hit", |b| {
        b.iter(|| black_box(compact.get(black_box(&hit))))
    });
    group.bench_function("compact_miss", |b| {
        b.iter(|| black_box(compact.get(black_box(miss))))
    });
    let plain_get = |key: &str| match plain.get(key) {
        Some((value, None)) => Some(Arc::clone(value)),
        Some((value, Some(at))) if *at > SystemTime::now() => Some(Arc::clone(value)),
        _ => None,
    };
    group.bench_function("string_map_hit", |b| {
        b.iter(|| black_box(plain_get(black_box(&hit))))
    });
    group.bench_function("string_map_miss", |b| {
        b.iter(|| black_box(plain_get(black_box(miss))))
    });
    group.finish();
}

fn memcached_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcached_key");
    for (client, key) in [("ipv4", "10.0.0.7"), ("ipv6", "2001:db8::1")] {
        for escape in [KeyEscape::None, KeyEscape::Uri] {
            let id = BenchmarkId::new(format!("{escape:?}").to_lowercase(), client);
            group.bench_function(id, |b| {
                b.iter(|| black_box(escape.apply(black_box(key)).len()))
            });
        }
    }
    group.finish();
}

fn bucketing(c: &mut Criterion) {
    c.bench_function("bucket_of", |b| {
        b.iter(|| black_box(bucket_of(black_box("web"), black_box("user-1234567"))))
    });
}

criterion_group!(
    benches,
    decisions,
    cidr_lookup,
    list_lookup,
    bucketing,
    memcached_keys
);
criterion_main!(benches);
