//! The policy side of a memcached store whose embedded policy store is held by a running
//! graygate (redb lets one process have the file open): what `graygate import` writes into a
//! memcached list while graygate serves. The lists live in memcached and need no policy store;
//! everything that would need it is refused, naming who holds it.

use super::{Change, Entry, HistoryRecord, HistoryRetention, StoreError, StoredPolicy};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// A policy store that another process holds: every operation is refused with
/// [`StoreError::Unavailable`] saying so. Its change feed never sends.
pub struct HeldElsewhere {
    /// The embedded store's directory, named in every refusal.
    dir: PathBuf,
    /// Kept so that subscribers wait on a feed that never sends instead of seeing it closed.
    changes: broadcast::Sender<Change>,
}

impl HeldElsewhere {
    pub fn new(dir: PathBuf) -> HeldElsewhere {
        HeldElsewhere {
            dir,
            changes: broadcast::channel(1).0,
        }
    }

    fn refused(&self) -> StoreError {
        StoreError::unavailable(
            "embedded",
            format!(
                "{} is held by a running graygate: the policy is read and changed through its admin API",
                self.dir.display()
            ),
        )
    }
}

#[async_trait]
impl super::Store for HeldElsewhere {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        Err(self.refused())
    }

    async fn save_policy(&self, _: &str, _: Option<u64>) -> Result<u64, StoreError> {
        Err(self.refused())
    }

    async fn save_policy_recorded(
        &self,
        _: &str,
        _: u64,
        _: &str,
        _: HistoryRetention,
    ) -> Result<u64, StoreError> {
        Err(self.refused())
    }

    async fn restore_policy(
        &self,
        _: &str,
        _: u64,
        _: &str,
        _: HistoryRetention,
    ) -> Result<super::Restore, StoreError> {
        Err(self.refused())
    }

    async fn load_history(
        &self,
        _: Option<u64>,
        _: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        Err(self.refused())
    }

    async fn lookup(&self, _: &str, _: &str) -> Result<Option<Arc<str>>, StoreError> {
        Err(self.refused())
    }

    async fn put_entries(&self, _: &str, _: &[Entry]) -> Result<(), StoreError> {
        Err(self.refused())
    }

    async fn remove_entries(&self, _: &str, _: &[String]) -> Result<usize, StoreError> {
        Err(self.refused())
    }

    async fn list_entries(&self, _: &str) -> Result<Vec<Entry>, StoreError> {
        Err(self.refused())
    }

    async fn put_record(&self, _: &str, _: &str, _: Option<Duration>) -> Result<(), StoreError> {
        Err(self.refused())
    }

    async fn get_record(&self, _: &str) -> Result<Option<String>, StoreError> {
        Err(self.refused())
    }

    async fn records(&self, _: &str) -> Result<Vec<(String, String)>, StoreError> {
        Err(self.refused())
    }

    async fn delete_record(&self, _: &str) -> Result<(), StoreError> {
        Err(self.refused())
    }

    async fn acquire_lease(&self, _: &str, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(self.refused())
    }

    async fn release_lease(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(self.refused())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn everything_is_refused_naming_the_holder() {
        let held = HeldElsewhere::new(PathBuf::from("/var/lib/graygate"));
        let e = held.load_policy().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "store embedded unavailable: /var/lib/graygate is held by a running graygate: the policy is read and changed through its admin API"
        );
        assert!(held.save_policy("{}", None).await.is_err());
        assert!(held
            .acquire_lease("l", "me", Duration::from_secs(1))
            .await
            .is_err());
    }
}
