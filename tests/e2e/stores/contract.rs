//! The store contract, written once and run against every store: the embedded store, Redis and
//! memcached. Each check is one test per store (`stores::contract::redis::history_...`).
//!
//! Records and leases are every store's: memcached keeps them in the store that holds its
//! policy, so they are shared as its policy is ([`Sharing`]).
//!
//! What a store cannot do is part of its [`Capabilities`], and the check then expects the
//! documented behaviour instead (memcached refuses to enumerate a list, naming it; its lists
//! share one key space; a second embedded store on the same directory is refused).

use super::{next_change, v, Sharing, Subject};
use graygate::store::{
    Change, Entry, HistoryRecord, HistoryRetention, Restore, StoreError, StoredPolicy,
};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;

/// One test per store for each check.
macro_rules! contract {
    ($($check:ident),+ $(,)?) => {
        contract!(@store embedded: $($check),+);
        contract!(@store redis: $($check),+);
        contract!(@store memcached: $($check),+);
    };
    (@store $store:ident: $($check:ident),+) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&super::Subject::$store().await).await;
                }
            )+
        }
    };
}

contract!(
    policy_revisions_and_conflicts,
    history_is_recorded_with_the_save,
    history_is_pruned_to_its_count_in_the_write,
    history_is_pruned_to_its_bytes_in_the_write,
    history_pages_below_a_revision,
    concurrent_writers_never_share_a_revision,
    lists_put_lookup_replace_remove,
    entries_expire_on_their_own,
    every_write_is_announced_to_subscribers,
    another_instance_sees_what_the_store_shares,
    records_put_get_list_delete,
    records_expire_on_their_own,
    a_lease_has_one_holder_at_a_time,
    a_restore_writes_only_over_an_older_revision,
);

/// The keys of the live entries of `list`, in the store's order (by key).
async fn keys_of(store: &Arc<dyn graygate::store::Store>, list: &str) -> Vec<String> {
    let entries = store.list_entries(list).await.unwrap();
    entries.into_iter().map(|e| e.key).collect()
}

fn conflict(err: &StoreError) -> Option<(u64, u64)> {
    match err {
        StoreError::Conflict { expected, actual } => Some((*expected, *actual)),
        _ => None,
    }
}

/// The policy document: revisions grow by one, a write against another revision than the stored
/// one is refused and changes nothing.
async fn policy_revisions_and_conflicts(s: &Subject) {
    let store = &s.store;
    assert_eq!(store.kind(), s.can.kind);
    assert_eq!(store.load_policy().await.unwrap(), None);

    assert_eq!(store.save_policy("{\"v\":1}", Some(0)).await.unwrap(), 1);
    assert_eq!(store.save_policy("{\"v\":2}", None).await.unwrap(), 2);
    for expected in [1, 0, 7] {
        let err = store
            .save_policy("{\"v\":x}", Some(expected))
            .await
            .unwrap_err();
        assert_eq!(conflict(&err), Some((expected, 2)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("policy revision conflict: expected {expected}, store has 2")
        );
    }
    let stored = store.load_policy().await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.json.as_str()), (2, "{\"v\":2}"));

    assert_eq!(store.save_policy("{\"v\":3}", Some(2)).await.unwrap(), 3);
    assert_eq!(
        store.load_policy().await.unwrap(),
        Some(StoredPolicy {
            revision: 3,
            json: "{\"v\":3}".into()
        })
    );
}

/// The records' texts.
fn texts(records: Vec<HistoryRecord>) -> Vec<String> {
    records.into_iter().map(|r| r.json).collect()
}

/// The records' revisions.
fn revisions(records: &[HistoryRecord]) -> Vec<u64> {
    records.iter().map(|r| r.revision).collect()
}

/// Writes `count` recorded revisions after `from`, record `r<revision>` padded to `size` bytes.
async fn write_records(s: &Subject, from: u64, count: u64, size: usize, keep: HistoryRetention) {
    for rev in from..from + count {
        let record = format!("{:<size$}", format!("r{}", rev + 1));
        s.store
            .save_policy_recorded("p", rev, &record, keep)
            .await
            .unwrap();
    }
}

/// A history record is written in the same step as the policy, newest first, each with its
/// revision; a conflict records nothing.
async fn history_is_recorded_with_the_save(s: &Subject) {
    let store = &s.store;
    let keep = HistoryRetention::default();
    assert_eq!(store.load_history(None, 10).await.unwrap(), []);
    assert_eq!(
        store
            .save_policy_recorded("p1", 0, "r1", keep)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .save_policy_recorded("p2", 1, "r2", keep)
            .await
            .unwrap(),
        2
    );
    let err = store
        .save_policy_recorded("p3", 1, "r3", keep)
        .await
        .unwrap_err();
    assert_eq!(conflict(&err), Some((1, 2)), "{err:?}");
    let history = store.load_history(None, 10).await.unwrap();
    assert_eq!(revisions(&history), [2, 1]);
    assert_eq!(texts(history), ["r2", "r1"]);
    assert_eq!(texts(store.load_history(None, 1).await.unwrap()), ["r2"]);
    assert_eq!(store.load_history(None, 0).await.unwrap(), []);
    let stored = store.load_policy().await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.json.as_str()), (2, "p2"));
}

/// The write that adds a record deletes the oldest beyond `keep`, in the same step.
async fn history_is_pruned_to_its_count_in_the_write(s: &Subject) {
    let keep = HistoryRetention {
        keep: 5,
        max_bytes: u64::MAX >> 12,
    };
    write_records(s, 0, 12, 3, keep).await;
    let all = s.store.load_history(None, usize::MAX).await.unwrap();
    assert_eq!(revisions(&all), [12, 11, 10, 9, 8]);
    assert_eq!(all[0].json, "r12");
    // A smaller bound applies from the next write on.
    let keep = HistoryRetention { keep: 2, ..keep };
    write_records(s, 12, 1, 3, keep).await;
    let all = s.store.load_history(None, usize::MAX).await.unwrap();
    assert_eq!(revisions(&all), [13, 12]);
}

/// The write that adds a record deletes the oldest until the records' summed size is within
/// `max_bytes`; the newest stays even when it alone is larger.
async fn history_is_pruned_to_its_bytes_in_the_write(s: &Subject) {
    let keep = HistoryRetention {
        keep: 1000,
        max_bytes: 100,
    };
    // 30 bytes each: three fit in 100, a fourth would not.
    write_records(s, 0, 8, 30, keep).await;
    let all = s.store.load_history(None, usize::MAX).await.unwrap();
    assert_eq!(revisions(&all), [8, 7, 6]);
    assert!(all.iter().all(|r| r.json.len() == 30), "{all:?}");
    // One record over the bound alone: kept, and everything older goes.
    write_records(s, 8, 1, 500, keep).await;
    let all = s.store.load_history(None, usize::MAX).await.unwrap();
    assert_eq!(revisions(&all), [9]);
    // The next small one pushes it out.
    write_records(s, 9, 2, 30, keep).await;
    let all = s.store.load_history(None, usize::MAX).await.unwrap();
    assert_eq!(revisions(&all), [11, 10]);
}

/// `before` pages the history: only revisions below it, newest first, `limit` at most.
async fn history_pages_below_a_revision(s: &Subject) {
    let keep = HistoryRetention::default();
    write_records(s, 0, 25, 4, keep).await;
    let page = |before, limit| async move {
        revisions(&s.store.load_history(before, limit).await.unwrap())
    };
    assert_eq!(page(None, 3).await, [25, 24, 23]);
    assert_eq!(page(Some(23), 3).await, [22, 21, 20]);
    assert_eq!(page(Some(3), 10).await, [2, 1]);
    assert_eq!(page(Some(1), 10).await, Vec::<u64>::new());
    assert_eq!(page(Some(1000), 2).await, [25, 24]);
    // Walking every page visits every record once, in order.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let got = s.store.load_history(before, 7).await.unwrap();
        let Some(last) = got.last() else { break };
        before = Some(last.revision);
        seen.extend(revisions(&got));
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<u64>>());
}

/// Twenty writers that read revision 1: exactly one wins, with revision 2. Where the policy is
/// shared, half of them write through another instance.
async fn concurrent_writers_never_share_a_revision(s: &Subject) {
    let a = Arc::clone(&s.store);
    let other = match s.can.sharing {
        Sharing::Everything => Some(s.another_instance().await.expect("another instance")),
        Sharing::Exclusive | Sharing::ListsOnly => None,
    };
    let b = other
        .as_ref()
        .map_or(Arc::clone(&a), |o| Arc::clone(&o.store));
    a.save_policy("base", None).await.unwrap();

    let writers: Vec<_> = (0..20)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            tokio::spawn(async move { store.save_policy(&format!("doc {i}"), Some(1)).await })
        })
        .collect();
    let mut won = Vec::new();
    for (i, writer) in writers.into_iter().enumerate() {
        match writer.await.unwrap() {
            Ok(revision) => won.push((i, revision)),
            Err(e) if conflict(&e) == Some((1, 2)) => {}
            Err(e) => panic!("writer {i}: {e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let (winner, revision) = won[0];
    assert_eq!(revision, 2);
    let stored = a.load_policy().await.unwrap().unwrap();
    assert_eq!(stored.json, format!("doc {winner}"));
}

/// Lists: put, look up, replace, remove (only existing keys count), other lists untouched, and
/// enumeration where the store can.
async fn lists_put_lookup_replace_remove(s: &Subject) {
    let store = &s.store;
    store
        .put_entries(
            "ips",
            &[
                Entry::new("10.0.0.2", "gray", None),
                Entry::new("10.0.0.1", "gray", Some(Duration::from_secs(3600))),
                Entry::new("10.0.0.3", "three", None),
            ],
        )
        .await
        .unwrap();
    store
        .put_entries("tokens", &[Entry::new("a", "user-a", None)])
        .await
        .unwrap();

    assert_eq!(store.lookup("ips", "10.0.0.2").await.unwrap(), v("gray"));
    assert_eq!(store.lookup("ips", "10.0.0.1").await.unwrap(), v("gray"));
    assert_eq!(store.lookup("ips", "10.9.9.9").await.unwrap(), None);
    assert_eq!(store.lookup("tokens", "a").await.unwrap(), v("user-a"));
    assert_eq!(store.lookup("ips", "a").await.unwrap(), None);
    let other_list = store.lookup("other", "10.0.0.2").await.unwrap();
    if s.can.separate_lists {
        assert_eq!(other_list, None);
    } else {
        assert_eq!(
            other_list,
            v("gray"),
            "lists without a prefix share one key space"
        );
    }

    let listed = store.list_entries("ips").await;
    if s.can.enumerate {
        let listed = listed.unwrap();
        let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert!(listed[0].expires_at.is_some());
        assert_eq!(listed[1].expires_at, None);
        assert_eq!(listed[1].value, "gray");
    } else {
        let err = listed.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable { store, .. } if store == s.can.kind),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("cannot list the keys of list ips"),
            "{err}"
        );
    }

    // Replace a value.
    store
        .put_entries("ips", &[Entry::new("10.0.0.3", "3", None)])
        .await
        .unwrap();
    assert_eq!(store.lookup("ips", "10.0.0.3").await.unwrap(), v("3"));

    // Remove: only existing keys count, other lists are untouched.
    let removed = store
        .remove_entries(
            "ips",
            &["10.0.0.1".into(), "missing".into(), "10.0.0.1".into()],
        )
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(store.lookup("ips", "10.0.0.1").await.unwrap(), None);
    assert_eq!(store.lookup("ips", "10.0.0.2").await.unwrap(), v("gray"));
    assert_eq!(store.lookup("tokens", "a").await.unwrap(), v("user-a"));
    assert_eq!(store.remove_entries("ips", &[]).await.unwrap(), 0);
    if s.can.enumerate {
        assert_eq!(keys_of(store, "ips").await, ["10.0.0.2", "10.0.0.3"]);
    }

    assert_eq!(
        store.remove_entries("tokens", &["a".into()]).await.unwrap(),
        1
    );
    assert_eq!(store.lookup("tokens", "a").await.unwrap(), None);
    if s.can.enumerate {
        assert!(store.list_entries("tokens").await.unwrap().is_empty());
    }
}

/// An entry's TTL ends it by itself; an entry put already expired is absent at once (and
/// replaces a live one); removing an expired entry does not count it.
async fn entries_expire_on_their_own(s: &Subject) {
    let store = &s.store;
    let ttl = s.can.short_ttl;
    store
        .put_entries(
            "ips",
            &[
                Entry::new("10.0.0.1", "kept", None),
                Entry::new("10.0.0.2", "brief", Some(ttl)),
                Entry::new("10.0.0.3", "replaced", None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.lookup("ips", "10.0.0.2").await.unwrap(), v("brief"));

    let past = Entry {
        key: "10.0.0.3".into(),
        value: "old".into(),
        expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
    };
    store.put_entries("ips", &[past]).await.unwrap();
    assert_eq!(store.lookup("ips", "10.0.0.3").await.unwrap(), None);

    crate::support::eventually(format!("the {ttl:?} entry expires"), async || {
        crate::support::equals(store.lookup("ips", "10.0.0.2").await.unwrap(), None)
    })
    .within(s.can.expired_within)
    .await;
    assert_eq!(store.lookup("ips", "10.0.0.1").await.unwrap(), v("kept"));
    if s.can.enumerate {
        assert_eq!(keys_of(store, "ips").await, ["10.0.0.1"]);
    }
    assert_eq!(
        store
            .remove_entries("ips", &["10.0.0.2".into(), "10.0.0.3".into()])
            .await
            .unwrap(),
        0
    );
}

/// Waits for `expected` among the changes, skipping single-key changes and repeats of changes
/// already seen (a shared store may hear its own announcement back); panics on anything else.
async fn announced(rx: &mut broadcast::Receiver<Change>, expected: Change, seen: &mut Vec<Change>) {
    let within = Duration::from_millis(100);
    loop {
        let change = next_change(rx, within, |c| matches!(c, Change::Key { .. }))
            .await
            .unwrap_or_else(|| panic!("{expected:?} not announced within {within:?}"));
        if change == expected {
            seen.push(change);
            return;
        }
        assert!(
            seen.contains(&change),
            "{change:?} announced while waiting for {expected:?}"
        );
    }
}

/// Every write reaches the store's subscribers within 100 ms: a saved policy with its revision,
/// a list written or removed from with its name.
async fn every_write_is_announced_to_subscribers(s: &Subject) {
    let store = &s.store;
    let mut changes = store.subscribe();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let revision = store.save_policy("p", None).await.unwrap();
        announced(&mut changes, Change::Policy { revision }, &mut seen).await;
    }
    for list in ["ips", "tokens"] {
        store
            .put_entries(list, &[Entry::new("a", "1", None)])
            .await
            .unwrap();
        announced(&mut changes, Change::List { list: list.into() }, &mut seen).await;
    }
    // The announcement is queued before the call returns; a shared store may still deliver its
    // own echo of the earlier write to `ips` first, which is the same change.
    store.remove_entries("ips", &["a".into()]).await.unwrap();
    seen.retain(|c| c != &Change::List { list: "ips".into() });
    announced(&mut changes, Change::List { list: "ips".into() }, &mut seen).await;
}

/// A second instance on the same store: what it shares, per [`Sharing`]. Shared changes reach
/// it within 100 ms.
async fn another_instance_sees_what_the_store_shares(s: &Subject) {
    let a = &s.store;
    match s.can.sharing {
        Sharing::Exclusive => {
            let Err(err) = s.another_instance().await else {
                panic!("a second {} store opened on the same data", s.can.kind);
            };
            assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        }
        Sharing::ListsOnly => {
            let b = s.another_instance().await.expect("another instance");
            let mut changes = b.store.subscribe();
            a.save_policy("a's", None).await.unwrap();
            a.put_entries("ips", &[Entry::new("10.0.0.9", "1", None)])
                .await
                .unwrap();
            assert_eq!(b.store.lookup("ips", "10.0.0.9").await.unwrap(), v("1"));
            assert_eq!(b.store.load_policy().await.unwrap(), None, "its own policy");
            let change = next_change(&mut changes, Duration::from_millis(100), |_| false).await;
            assert_eq!(change, None, "nothing is announced to another instance");
        }
        Sharing::Everything => {
            let b = s.another_instance().await.expect("another instance");
            let mut changes = b.store.subscribe();
            for expected in 1..=3u64 {
                let revision = a
                    .save_policy(&format!("doc {expected}"), None)
                    .await
                    .unwrap();
                assert_eq!(revision, expected);
                let change = next_change(&mut changes, Duration::from_millis(100), |c| {
                    matches!(c, Change::Key { .. })
                })
                .await;
                assert_eq!(change, Some(Change::Policy { revision }));
            }
            let stored = b.store.load_policy().await.unwrap().unwrap();
            assert_eq!((stored.revision, stored.json.as_str()), (3, "doc 3"));

            a.put_entries("ips", &[Entry::new("10.0.0.9", "1", None)])
                .await
                .unwrap();
            let change = next_change(&mut changes, Duration::from_millis(100), |c| {
                matches!(c, Change::Key { .. })
            })
            .await;
            assert_eq!(change, Some(Change::List { list: "ips".into() }));
            assert_eq!(b.store.lookup("ips", "10.0.0.9").await.unwrap(), v("1"));
        }
    }
}

/// The instance on which a check looks for what another instance shares: a second instance
/// where the store shares its policy (and so its records and leases), else the same one.
async fn other_instance(s: &Subject) -> (Arc<dyn graygate::store::Store>, Option<super::Instance>) {
    match s.can.sharing {
        Sharing::Everything => {
            let other = s.another_instance().await.expect("another instance");
            (Arc::clone(&other.store), Some(other))
        }
        Sharing::Exclusive | Sharing::ListsOnly => (Arc::clone(&s.store), None),
    }
}

fn pairs(records: &[(&str, &str)]) -> Vec<(String, String)> {
    let pair = |(k, v): &(&str, &str)| (k.to_string(), v.to_string());
    records.iter().map(pair).collect()
}

/// Records: put, get, overwrite, listed by a literal prefix in key order, deleted; shared with
/// every instance where the policy is; not announced; no list sees them.
async fn records_put_get_list_delete(s: &Subject) {
    let store = &s.store;
    let (other, _instance) = other_instance(s).await;
    let mut changes = store.subscribe();
    assert_eq!(store.get_record("rollout/web").await.unwrap(), None);
    assert!(store.records("").await.unwrap().is_empty());

    let hour = Some(Duration::from_secs(3600));
    for (key, value, ttl) in [
        ("rollout/web", r#"{"step":1}"#, None),
        ("counters/b", "b", hour),
        ("counters/a", "a", None),
        ("counters/a/x", "ax", None),
        ("counters", "bare", None),
        ("countersX", "x", None),
        ("glob/*", "star", None),
        ("glob/a", "a", None),
        ("glob/[ab]", "class", None),
    ] {
        store.put_record(key, value, ttl).await.unwrap();
    }
    assert_eq!(
        store.get_record("rollout/web").await.unwrap().as_deref(),
        Some(r#"{"step":1}"#)
    );
    store
        .put_record("rollout/web", r#"{"step":2}"#, None)
        .await
        .unwrap();
    assert_eq!(
        other.get_record("rollout/web").await.unwrap().as_deref(),
        Some(r#"{"step":2}"#),
        "the newest value, on every instance that shares the policy"
    );

    assert_eq!(
        other.records("counters/").await.unwrap(),
        pairs(&[
            ("counters/a", "a"),
            ("counters/a/x", "ax"),
            ("counters/b", "b")
        ])
    );
    // A prefix is taken literally: glob characters match themselves only.
    assert_eq!(
        store.records("glob/*").await.unwrap(),
        pairs(&[("glob/*", "star")])
    );
    assert_eq!(
        store.records("glob/[").await.unwrap(),
        pairs(&[("glob/[ab]", "class")])
    );
    let all: Vec<String> = store
        .records("")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(all.len(), 9, "{all:?}");

    store.delete_record("counters/a").await.unwrap();
    store.delete_record("never-written").await.unwrap();
    assert_eq!(other.get_record("counters/a").await.unwrap(), None);
    assert_eq!(
        store.records("counters/").await.unwrap(),
        pairs(&[("counters/a/x", "ax"), ("counters/b", "b")])
    );

    // Records are neither entries of a list nor announced.
    if s.can.enumerate {
        assert!(store.list_entries("counters").await.unwrap().is_empty());
    }
    assert_eq!(store.lookup("counters", "a/x").await.unwrap(), None);
    let change = next_change(&mut changes, Duration::from_millis(100), |_| false).await;
    assert_eq!(change, None, "a record write is announced");
}

/// A record's TTL ends it by itself (on every instance that shares it); a zero TTL removes it at
/// once; writing it again without a TTL keeps it.
async fn records_expire_on_their_own(s: &Subject) {
    let store = &s.store;
    let (other, _instance) = other_instance(s).await;
    let ttl = Duration::from_millis(300);
    store
        .put_record("counters/brief", "1", Some(ttl))
        .await
        .unwrap();
    store.put_record("counters/kept", "2", None).await.unwrap();
    store
        .put_record("counters/again", "3", Some(ttl))
        .await
        .unwrap();
    store.put_record("counters/again", "4", None).await.unwrap();
    store
        .put_record("counters/kept", "old", Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(store.get_record("counters/kept").await.unwrap(), None);
    store.put_record("counters/kept", "2", None).await.unwrap();
    assert_eq!(
        other.get_record("counters/brief").await.unwrap().as_deref(),
        Some("1")
    );

    crate::support::eventually(format!("the {ttl:?} record expires"), async || {
        crate::support::equals(other.get_record("counters/brief").await.unwrap(), None)
    })
    .within(s.can.expired_within)
    .await;
    assert_eq!(
        store.records("counters/").await.unwrap(),
        pairs(&[("counters/again", "4"), ("counters/kept", "2")])
    );
}

/// A lease: the first holder gets it, a second is refused, the holder renews it; once it expires
/// the second gets it (never before its TTL); a release by the holder frees it at once, one by
/// anyone else does nothing. Where the policy is shared, the second holder asks through another
/// instance.
async fn a_lease_has_one_holder_at_a_time(s: &Subject) {
    let a = &s.store;
    let (b, _instance) = other_instance(s).await;
    let long = Duration::from_secs(60);
    let short = Duration::from_millis(300);
    let lease = "rollout-driver";

    assert!(a.acquire_lease(lease, "one", long).await.unwrap());
    assert!(!b.acquire_lease(lease, "two", long).await.unwrap());
    assert!(
        a.acquire_lease(lease, "one", long).await.unwrap(),
        "renewal"
    );
    assert!(!b.acquire_lease(lease, "two", long).await.unwrap());
    // Another lease is another matter.
    assert!(b.acquire_lease("other", "two", long).await.unwrap());

    // The holder renews for a short term and stops renewing: the lease passes on once it ends.
    let renewed = Instant::now();
    assert!(a.acquire_lease(lease, "one", short).await.unwrap());
    crate::support::eventually(format!("the {short:?} lease expires"), async || {
        crate::support::equals(b.acquire_lease(lease, "two", long).await.unwrap(), true)
    })
    .within(s.can.expired_within)
    .await;
    assert!(
        renewed.elapsed() >= short,
        "taken over after {:?}, before the {short:?} term ended",
        renewed.elapsed()
    );
    assert!(!a.acquire_lease(lease, "one", long).await.unwrap());

    // A release by someone who does not hold it does nothing.
    a.release_lease(lease, "one").await.unwrap();
    assert!(!a.acquire_lease(lease, "one", long).await.unwrap());
    // The holder's release frees it at once.
    b.release_lease(lease, "two").await.unwrap();
    assert!(a.acquire_lease(lease, "one", long).await.unwrap());
    assert!(!b.acquire_lease(lease, "two", long).await.unwrap());
    // Releasing a free lease is fine too.
    a.release_lease("never-taken", "one").await.unwrap();
}

/// A restore puts a policy back AT its revision, with its history record, only over a store that
/// is behind it (empty counts as 0); it is announced; the revision counter continues from it; a
/// store at that revision or newer is left as it is.
async fn a_restore_writes_only_over_an_older_revision(s: &Subject) {
    let store = &s.store;
    let keep = HistoryRetention::default();
    let mut changes = store.subscribe();

    // Empty: written at revision 7.
    assert_eq!(
        store.restore_policy("p7", 7, "r7", keep).await.unwrap(),
        Restore::Restored { from: 0 }
    );
    let announced = next_change(&mut changes, Duration::from_secs(2), |c| {
        !matches!(c, Change::Policy { .. })
    })
    .await;
    assert_eq!(announced, Some(Change::Policy { revision: 7 }));
    let stored = store.load_policy().await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.json.as_str()), (7, "p7"));
    let history = store.load_history(None, 10).await.unwrap();
    assert_eq!(revisions(&history), [7]);
    assert_eq!(texts(history), ["r7"]);

    // Not behind: at the same revision, or an older one offered; nothing changes.
    for (json, revision) in [("other", 7), ("older", 5)] {
        assert_eq!(
            store
                .restore_policy(json, revision, "x", keep)
                .await
                .unwrap(),
            Restore::NotBehind { actual: 7 }
        );
    }
    assert_eq!(store.load_policy().await.unwrap().unwrap().json, "p7");

    // The counter continues from the restored revision.
    assert_eq!(
        store
            .save_policy_recorded("p8", 7, "r8", keep)
            .await
            .unwrap(),
        8
    );
    // Behind (at 8), a newer snapshot (10) wins, and the older records stay below it.
    assert_eq!(
        store.restore_policy("p10", 10, "r10", keep).await.unwrap(),
        Restore::Restored { from: 8 }
    );
    let history = store.load_history(None, 10).await.unwrap();
    assert_eq!(revisions(&history), [10, 8, 7]);
    let stored = store.load_policy().await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.json.as_str()), (10, "p10"));
}
