//! What the gateway's tests share: a real embedded store on a temporary directory, wrapped so
//! that a test can make its conditional writes lose a race or its lookups hang, and a small
//! policy to start from.

use super::Gateway;
use crate::policy::PolicyDoc;
use crate::store::{
    CacheStats, Change, EmbeddedStore, Entry, HistoryRecord, HistoryRetention, Store, StoreError,
    StoreHealth, StoredPolicy,
};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The upstreams every test policy points at.
pub(super) const UPSTREAMS: [&str; 2] = ["stable", "canary"];

/// One service `web`, stable `v1`, canary `v2`, every request routed to it.
pub(super) const WEB: &str = "[[routes]]\nservice = \"web\"\n\
    [[services]]\nname = \"web\"\nstable = \"v1\"\nversions = { v1 = \"stable\", v2 = \"canary\" }\n";

/// A policy from TOML.
pub(super) fn doc(text: &str) -> PolicyDoc {
    toml::from_str(text).expect("a test policy parses")
}

/// An embedded store on its own temporary directory, with two faults a test can switch on.
pub(super) struct TestStore {
    inner: EmbeddedStore,
    /// Kept for as long as the store: the directory is removed on drop.
    _dir: tempfile::TempDir,
    /// Conditional writes that lose a race: before each, another writer stores a revision of
    /// its own first (the document the change started from, written again, and recorded in the
    /// history as `rival`), so that the change made again on it is still a change.
    pub(super) rivals: AtomicUsize,
    /// Lookups never answer and nothing is answered from memory: a store that hangs.
    pub(super) hang: AtomicBool,
}

impl TestStore {
    pub(super) fn new() -> Arc<TestStore> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let inner = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
        Arc::new(TestStore {
            inner,
            _dir: dir,
            rivals: AtomicUsize::new(0),
            hang: AtomicBool::new(false),
        })
    }

    /// Takes one rival write, if any is left.
    fn rival(&self) -> bool {
        self.rivals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A gateway over `store` with the test upstreams, seeded with `seed`.
pub(super) async fn gateway(
    store: &Arc<TestStore>,
    seed: Option<&PolicyDoc>,
    lookup_timeout: Duration,
) -> Arc<Gateway> {
    let upstreams: Vec<String> = UPSTREAMS.iter().map(|u| u.to_string()).collect();
    let store: Arc<dyn Store> = store.clone();
    let retention = HistoryRetention::default();
    Gateway::start(store, upstreams, seed, lookup_timeout, retention)
        .await
        .expect("the gateway starts")
}

/// A gateway over `store` with the test upstreams plus `extra`, seeded with `seed`, with the
/// fleet settings `options`.
pub(super) async fn gateway_in_fleet(
    store: &Arc<TestStore>,
    extra: &[&str],
    seed: Option<&PolicyDoc>,
    options: &super::FleetOptions,
) -> Arc<Gateway> {
    let upstreams: Vec<String> = UPSTREAMS
        .iter()
        .chain(extra)
        .map(|u| u.to_string())
        .collect();
    let store: Arc<dyn Store> = store.clone();
    let retention = HistoryRetention::default();
    Gateway::start_in_fleet(
        store,
        upstreams,
        seed,
        Duration::from_secs(1),
        retention,
        options,
    )
    .await
    .expect("the gateway starts")
}

/// The newest `limit` changes with their documents, newest first: a page, then each change
/// rebuilt.
pub(super) async fn full_history(g: &Gateway, limit: usize) -> Vec<super::HistoryEntry> {
    let (page, _) = g
        .history_page(None, limit)
        .await
        .expect("the history reads");
    let mut out = Vec::new();
    for change in page {
        out.push(
            g.history_entry(change.revision)
                .await
                .expect("the change rebuilds"),
        );
    }
    out
}

#[async_trait]
impl Store for TestStore {
    fn kind(&self) -> &'static str {
        "test"
    }

    async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.inner.load_policy().await
    }

    async fn save_policy(&self, json: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        self.inner.save_policy(json, expected).await
    }

    async fn save_policy_recorded(
        &self,
        doc: &str,
        at: u64,
        rec: &str,
        retention: HistoryRetention,
    ) -> Result<u64, StoreError> {
        if self.rival() {
            // The rival writes the stored document again, as a change of its own.
            let mut rival: serde_json::Value =
                serde_json::from_str(rec).expect("a history record is JSON");
            rival["actor"] = "rival".into();
            rival["undo"] = serde_json::json!([]);
            let same = self
                .inner
                .load_policy()
                .await?
                .map(|p| p.json)
                .unwrap_or_else(|| "{}".to_owned());
            self.inner
                .save_policy_recorded(&same, at, &rival.to_string(), retention)
                .await?;
        }
        self.inner
            .save_policy_recorded(doc, at, rec, retention)
            .await
    }

    async fn restore_policy(
        &self,
        json: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<crate::store::Restore, StoreError> {
        self.inner
            .restore_policy(json, revision, record, retention)
            .await
    }

    async fn load_history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.inner.load_history(before, limit).await
    }

    fn lookup_local(&self, list: &str, key: &str) -> Option<Option<Arc<str>>> {
        if self.hang.load(Ordering::SeqCst) {
            return None;
        }
        self.inner.lookup_local(list, key)
    }

    async fn lookup(&self, list: &str, key: &str) -> Result<Option<Arc<str>>, StoreError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.lookup(list, key).await
    }

    async fn put_entries(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError> {
        self.inner.put_entries(list, entries).await
    }

    async fn remove_entries(&self, list: &str, keys: &[String]) -> Result<usize, StoreError> {
        self.inner.remove_entries(list, keys).await
    }

    async fn list_entries(&self, list: &str) -> Result<Vec<Entry>, StoreError> {
        self.inner.list_entries(list).await
    }

    async fn put_record(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.inner.put_record(key, value, ttl).await
    }

    async fn get_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.get_record(key).await
    }

    async fn records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.records(prefix).await
    }

    async fn delete_record(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete_record(key).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.acquire_lease(name, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.release_lease(name, holder).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.subscribe()
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}
