//! graygate on a Redis Cluster of three primaries: both original designs' keys spread over the
//! cluster's slots and nodes route correctly, values written by any client on any node are
//! followed (one tracking connection per primary), graygate's own keys share one hash tag, and a
//! change made through one instance reaches all of them.

use crate::sentinel::{a_change_reaches_every_instance, both_designs, EXPECTED, SEED};
use crate::support::*;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layouts_route_across_the_slots_of_a_cluster_and_changes_reach_every_instance() {
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let cluster = RedisCluster::start().await;
    for (key, value) in SEED {
        cluster.cli(&["SET", key, value]);
    }
    // The designs' keys are in different slots, held by more than one node: every lookup below
    // that answers right was routed to its slot.
    let slots: BTreeSet<u16> = SEED.iter().map(|(k, _)| cluster.slot(k)).collect();
    assert_eq!(slots.len(), SEED.len(), "one slot per key: {slots:?}");
    let nodes: BTreeSet<u16> = SEED.iter().map(|(k, _)| cluster.node_of(k)).collect();
    assert!(nodes.len() >= 2, "the keys are on several nodes: {nodes:?}");

    let design = both_designs(&cluster, &prod, &gray);
    let instances = [
        design.clone().start().await,
        design.clone().start().await,
        design.start().await,
    ];
    for gg in &instances {
        gg.client().assert_versions(EXPECTED).await;
    }

    // In a cluster, invalidations come from every primary (one tracking connection each).
    for gg in &instances {
        let status = gg.admin_api().get("/v1/status").await;
        assert_eq!(status["store"]["invalidation"], "tracking", "{status}");
    }

    // graygate's own keys share the hash tag of the default prefix: one slot, one node.
    let revision = cluster.cli(&["HGET", "{graygate}:policy", "revision"]);
    assert!(
        revision.parse::<u64>().is_ok(),
        "the policy is stored: {revision:?}"
    );
    assert_eq!(
        cluster.slot("{graygate}:policy"),
        cluster.slot("{graygate}:history")
    );

    // Values written by a plain client on any node are followed before the cache's 5 s TTL
    // would end them (tracking on each primary): a cached key changed, new keys on other nodes.
    let keys_nodes: BTreeSet<u16> = ["TOKEN_abc", "10.0.0.9"]
        .iter()
        .map(|k| {
            cluster.cli(&["SET", k, "1"]);
            cluster.node_of(k)
        })
        .collect();
    cluster.cli(&["SET", "TOKEN_abc", "9000"]);
    eprintln!("keys written on nodes {keys_nodes:?}");
    for gg in &instances {
        for (headers, want) in [
            (&[("TOKEN", "abc")][..], "prod"),
            (&[("X-Real-IP", "10.0.0.9")][..], "gray"),
        ] {
            gg.eventually_answers(headers, want)
                .within(Duration::from_secs(3))
                .await;
        }
    }
    cluster.cli(&["SET", "TOKEN_abc", "1234"]);

    // A change through one instance reaches every instance; routing and the admin API agree.
    a_change_reaches_every_instance(&instances, 2, "On a Redis Cluster").await;
    // The history went with the policy, atomically, in the tagged slot.
    let history = instances[0].ctl().ok(&["history"]);
    assert!(history.contains("gray=100"), "{history}");

    // Listing a gray list scans every primary: the IP list's keys live on several nodes.
    let entries = instances[0].ctl().ok(&["list", "show", "redis"]);
    for key in [
        "TOKEN_abc",
        "TOKEN_def",
        "Grayscale_Range",
        "10.0.0.7",
        "10.0.0.9",
    ] {
        assert!(entries.contains(key), "{key} listed:\n{entries}");
    }
    // Entries written and removed through graygate span slots: one transaction per slot.
    let ips = [
        "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6",
    ];
    let ip_slots: BTreeSet<u16> = ips.iter().map(|k| cluster.slot(k)).collect();
    assert!(ip_slots.len() > 1, "{ip_slots:?}");
    let mut add = vec!["list", "add", "redis"];
    add.extend(ips);
    instances[0].ctl().ok(&add);
    for gg in &instances {
        for ip in ips {
            gg.eventually_answers(&[("X-Real-IP", ip)], "gray")
                .within(Duration::from_secs(3))
                .await;
        }
    }
    let mut remove = vec!["list", "remove", "redis"];
    remove.extend(ips);
    instances[1].ctl().ok(&remove);
    for ip in ips {
        assert_eq!(cluster.cli(&["EXISTS", ip]), "0", "{ip} removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_prefix_without_a_hash_tag_is_refused_naming_the_field() {
    let cluster = RedisCluster::start().await;
    let (prod, gray) = (backend("prod").await, backend("gray").await);
    let mut store: graygate::config::file::StoreFile = (&cluster).into();
    store.key_prefix = Some("graygate:".into());
    let design = both_designs(store, &prod, &gray);
    let dir = tempfile::tempdir().unwrap();
    let checked = check(&design.write(dir.path()));
    assert_eq!(checked.code, 1, "{checked:?}");
    assert!(
        checked
            .stderr
            .contains("store.key_prefix: `graygate:` has no hash tag"),
        "{checked:?}"
    );
}
