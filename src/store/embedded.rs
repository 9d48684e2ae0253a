//! The embedded store: policy and lists in one local [redb] file, with every list mirrored in
//! memory.
//!
//! This is graygate's default store, for a single instance (or instances that each own their
//! data). It exists so that graygate runs with no external service to set up: redb is an embedded
//! key-value database in pure Rust whose write transactions are ACID and crash-safe (a commit is
//! either fully on disk or not at all, even after a power cut), which is what the policy revision
//! counter and "one atomic step" list updates of [`Store`] need.
//!
//! # Layout on disk
//! One file, `graygate.redb` ([`DB_FILE`]) inside the data directory, with two tables:
//! - `meta`: `"policy"` -> `(revision, json)`; the revision and the document are one value so that
//!   they can never disagree;
//! - `entries`: `(list, key)` -> `(value, expires_at)` with `expires_at` in Unix milliseconds,
//!   `0` meaning "never". Expiry times are absolute, so TTLs keep counting while graygate is down.
//! - `history`: policy revision -> the history record of the change that made it (JSON), written
//!   in the policy's own transaction, which also deletes the oldest records that the
//!   [`HistoryRetention`] no longer keeps (their sizes are summed from the table in that
//!   transaction: at most `keep` records, so nothing to keep in step with).
//! - `records`: record key -> `(value, expires_at)`, expiry encoded as for `entries` (see
//!   [`Store::put_record`]). Records are few and small; expired ones are deleted at open and by
//!   every record write.
//!
//! # Leases
//! A lease ([`Store::acquire_lease`]) lives in memory only: one process owns the database file
//! (a second open is refused), so a lease has no one to be shared with beyond this process, and
//! none is left behind by a process that died. Its expiry is measured by the monotonic clock.
//!
//! # Reads and writes
//! Every list is mirrored in a [`CompactList`] behind a [`RwLock`], loaded at
//! [`EmbeddedStore::open`]: [`Store::lookup_local`] runs on the request path and answers from
//! memory, without I/O and without allocating (a hit clones an `Arc`). The compact form (IP keys
//! packed into integers, values interned) keeps a list of a million IP addresses in about 20 MiB. Writes (admin-driven, rare) go to redb first, in one
//! write transaction that is committed (fsync) before the mirror is updated and subscribers are
//! told, so that memory never shows data the disk does not hold. redb calls block for a few
//! milliseconds; they are called directly from the async methods, which is acceptable for rare
//! admin writes and keeps the code simple.
//!
//! Expired entries count as absent everywhere (lookups, listings, removal counts). They are
//! deleted lazily: at open, from the list touched by each write, and by
//! [`EmbeddedStore::purge_expired`].

use super::compact::CompactList;
use super::{
    Change, Entry, HistoryRecord, HistoryRetention, Restore, Store, StoreError, StoredPolicy,
};
use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "graygate.redb";

/// Value of [`StoreError`]'s `store` field for this store.
const STORE: &str = "embedded";

/// How many changes a subscriber may fall behind before it lags (and must reload everything).
const CHANGE_CAPACITY: usize = 256;

/// `"policy"` -> `(revision, policy json)`.
const META: TableDefinition<&str, (u64, &str)> = TableDefinition::new("meta");

/// Key of the policy document in [`META`].
const POLICY_KEY: &str = "policy";

/// Policy revision -> history record (JSON) of the change that made it.
const HISTORY: TableDefinition<u64, &str> = TableDefinition::new("history");

/// `(list, key)` -> `(value, expires_at as Unix millis, 0 = never)`.
const ENTRIES: TableDefinition<(&str, &str), (&str, u64)> = TableDefinition::new("entries");

/// Record key -> `(value, expires_at as Unix millis, 0 = never)`.
const RECORDS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("records");

/// The [`ENTRIES`] table opened in a write transaction.
type EntriesTable<'txn> = redb::Table<'txn, (&'static str, &'static str), (&'static str, u64)>;

/// redb's page cache size (a tenth of it buffers a write transaction's dirty pages). The load at
/// open reads every list once, so whatever the cache holds then is never asked for again, and
/// stays resident: 16 MiB of it was 14 MiB of graygate's idle RSS with a list of a million
/// entries. Writes and the load were no slower with 1 MiB (10 writes of 1,000 random keys in a
/// million: 0.98 s with 16 MiB, 0.86 s with 1 MiB; a 1M import: 11.0 s, 10.0 s); 2 MiB keeps the
/// branch pages of such a list's tree cached for the writes.
const REDB_CACHE_BYTES: usize = 2 << 20;

/// list name -> its entries.
type Mirror = HashMap<String, CompactList>;

/// The open database, borrowed for one transaction ([`EmbeddedStore::database`]).
struct Db<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        // Made only when the database is open, and it stays open while this guard lives.
        self.0.as_ref().expect("checked open when borrowed")
    }
}

/// The redb-backed [`Store`]. See the module documentation.
pub struct EmbeddedStore {
    /// The open database; redb serializes write transactions and lets reads run alongside them.
    /// `None` while it is handed over to a new graygate process ([`EmbeddedStore::hand_over`]):
    /// redb lets one process have the file open, and lookups go on from the mirror meanwhile.
    db: RwLock<Option<Database>>,
    /// Path of the database file, to name it in error messages and logs.
    path: PathBuf,
    /// Every list, as committed on disk, so that request-path lookups never touch the disk.
    mirror: RwLock<Mirror>,
    /// Held by every write from the start of its transaction until subscribers are notified, so
    /// that mirror updates and notifications happen in commit order (two writers committing
    /// `A` then `B` must not leave the mirror with `A`'s value).
    writer: Mutex<()>,
    /// Sender of change notifications; [`Store::subscribe`] hands out receivers.
    changes: broadcast::Sender<Change>,
    /// Lease name -> its holder and when it ends. In memory: see the module documentation.
    leases: Mutex<HashMap<String, Lease>>,
}

/// Longest lease term: a longer TTL (`Duration::MAX`) means "until released" and is cut to this,
/// which no monotonic clock overflows.
const LEASE_TTL_MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A lease held in memory.
#[derive(Debug)]
struct Lease {
    holder: String,
    /// When it ends, by the monotonic clock.
    until: Instant,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`: creates the directory if missing and the database
    /// file [`DB_FILE`] inside it, deletes entries that expired while graygate was down, and loads
    /// every list in memory.
    ///
    /// Fails with [`StoreError::Open`] naming the directory or file, e.g. when the directory cannot
    /// be created, the file is not a redb database, or another process has it open.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::open(
                dir.display().to_string(),
                "cannot create the data directory",
            )
            .with_source(e)
        })?;
        let path = dir.join(DB_FILE);
        let open_err = |what: &str, e: redb::Error| {
            StoreError::open(path.display().to_string(), what).with_source(e)
        };

        // The mirror serves every read; redb's page cache only speeds up writes, so keep it
        // small (its default of 1 GiB shows up as resident memory).
        let db = Database::builder()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(&path)
            .map_err(|e| open_err("cannot open the database", e.into()))?;

        // Create both tables (so that later reads find them) and purge what expired meanwhile.
        let now = SystemTime::now();
        let txn = db
            .begin_write()
            .map_err(|e| open_err("cannot start a write transaction", e.into()))?;
        {
            txn.open_table(META)
                .map_err(|e| open_err("cannot open table meta", e.into()))?;
            txn.open_table(HISTORY)
                .map_err(|e| open_err("cannot open table history", e.into()))?;
            txn.open_table(RECORDS)
                .map_err(|e| open_err("cannot open table records", e.into()))?
                .retain(|_, (_, ms)| !expired(ms, now))
                .map_err(|e| open_err("cannot purge expired records", e.into()))?;
            let mut entries = txn
                .open_table(ENTRIES)
                .map_err(|e| open_err("cannot open table entries", e.into()))?;
            entries
                .retain(|_, (_, ms)| !expired(ms, now))
                .map_err(|e| open_err("cannot purge expired entries", e.into()))?;
        }
        txn.commit()
            .map_err(|e| open_err("cannot commit the initial transaction", e.into()))?;

        let mut mirror = Mirror::new();
        let read = db
            .begin_read()
            .map_err(|e| open_err("cannot start a read transaction", e.into()))?;
        let entries = read
            .open_table(ENTRIES)
            .map_err(|e| open_err("cannot open table entries", e.into()))?;
        let iter = entries
            .iter()
            .map_err(|e| open_err("cannot read table entries", e.into()))?;
        for item in iter {
            let (k, v) = item.map_err(|e| open_err("cannot read table entries", e.into()))?;
            let (list, key) = k.value();
            let (value, ms) = v.value();
            // Not `entry(list.to_owned())`: that would allocate the name once per entry.
            let entries = match mirror.get_mut(list) {
                Some(entries) => entries,
                None => mirror.entry(list.to_owned()).or_default(),
            };
            entries.insert(key, value, decode_expiry(ms));
        }
        drop(entries);
        drop(read);

        let (changes, _) = broadcast::channel(CHANGE_CAPACITY);
        Ok(EmbeddedStore {
            db: RwLock::new(Some(db)),
            path,
            mirror: RwLock::new(mirror),
            writer: Mutex::new(()),
            changes,
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes every expired entry from disk and memory and returns how many there were.
    ///
    /// Expired entries are already invisible, so this sends no [`Change`]; call it now and then
    /// to reclaim space from lists that are never written to.
    pub fn purge_expired(&self) -> Result<usize, StoreError> {
        let _writer = self.lock_writer();
        let now = SystemTime::now();
        let purged = self.write_txn("purging expired entries", |txn| {
            let mut table = self.open_entries(txn)?;
            let mut purged = 0usize;
            table
                .retain(|_, (_, ms)| {
                    let keep = !expired(ms, now);
                    if !keep {
                        purged += 1;
                    }
                    keep
                })
                .map_err(|e| self.db_err("purging expired entries", "entries", e))?;
            Ok(purged)
        })?;
        let mut mirror = self.mirror_write();
        mirror.retain(|_, entries| {
            entries.retain_live(now);
            !entries.is_empty()
        });
        Ok(purged)
    }

    /// Names of the lists that hold at least one live entry, sorted.
    pub fn list_names(&self) -> Vec<String> {
        let now = SystemTime::now();
        let mirror = self.mirror_read();
        let mut names: Vec<String> = mirror
            .iter()
            .filter(|(_, entries)| entries.live_count(now) > 0)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        names
    }

    /// How many live entries `list` holds (0 for an unknown list).
    pub fn count(&self, list: &str) -> usize {
        let now = SystemTime::now();
        self.mirror_read()
            .get(list)
            .map_or(0, |entries| entries.live_count(now))
    }

    fn load_policy_sync(&self) -> Result<Option<StoredPolicy>, StoreError> {
        const WHAT: &str = "reading the policy";
        let db = self.database()?;
        let read = db.begin_read().map_err(|e| self.db_err(WHAT, "meta", e))?;
        let meta = read
            .open_table(META)
            .map_err(|e| self.db_err(WHAT, "meta", e))?;
        let stored = meta
            .get(POLICY_KEY)
            .map_err(|e| self.db_err(WHAT, "meta/policy", e))?;
        Ok(stored.map(|guard| {
            let (revision, json) = guard.value();
            StoredPolicy {
                revision,
                json: json.to_owned(),
            }
        }))
    }

    fn save_policy_sync(
        &self,
        json: &str,
        expected: Option<u64>,
        record: Option<(&str, HistoryRetention)>,
    ) -> Result<u64, StoreError> {
        const WHAT: &str = "saving the policy";
        let _writer = self.lock_writer();
        let revision = self.write_txn(WHAT, |txn| {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.db_err(WHAT, "meta", e))?;
            let actual = meta
                .get(POLICY_KEY)
                .map_err(|e| self.db_err(WHAT, "meta/policy", e))?
                .map_or(0, |guard| guard.value().0);
            if let Some(expected) = expected {
                if expected != actual {
                    return Err(StoreError::Conflict { expected, actual });
                }
            }
            let next = actual.checked_add(1).ok_or_else(|| {
                StoreError::bad_data(
                    STORE,
                    "meta/policy",
                    format!("revision {actual} cannot grow any more"),
                )
            })?;
            meta.insert(POLICY_KEY, (next, json))
                .map_err(|e| self.db_err(WHAT, "meta/policy", e))?;
            if let Some((record, retention)) = record {
                self.record_and_prune(txn, WHAT, next, record, retention)?;
            }
            Ok(next)
        })?;
        let _ = self.changes.send(Change::Policy { revision });
        Ok(revision)
    }

    /// Within a write transaction: puts `record` in the history at `revision`, then deletes the
    /// oldest records `retention` no longer keeps (a save and a restore prune alike).
    fn record_and_prune(
        &self,
        txn: &WriteTransaction,
        what: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<(), StoreError> {
        let mut history = txn
            .open_table(HISTORY)
            .map_err(|e| self.db_err(what, "history", e))?;
        history
            .insert(revision, record)
            .map_err(|e| self.db_err(what, "history", e))?;
        // Sizes newest first; the first revision the retention does not keep and every older
        // one go.
        let mut sizes = Vec::new();
        for item in history
            .iter()
            .map_err(|e| self.db_err(what, "history", e))?
            .rev()
        {
            let (revision, record) = item.map_err(|e| self.db_err(what, "history", e))?;
            sizes.push((revision.value(), record.value().len() as u64));
        }
        let kept = retention.kept(sizes.iter().map(|&(_, size)| size));
        if let Some(&(newest_dropped, _)) = sizes.get(kept) {
            history
                .retain_in(..=newest_dropped, |_, _| false)
                .map_err(|e| self.db_err(what, "history", e))?;
        }
        Ok(())
    }

    /// [`Store::restore_policy`]: one write transaction that checks the stored revision, puts
    /// the document at `revision` and its record in the history, pruned as a save prunes it.
    fn restore_policy_sync(
        &self,
        json: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<Restore, StoreError> {
        const WHAT: &str = "restoring the policy";
        let _writer = self.lock_writer();
        let done = self.write_txn(WHAT, |txn| {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.db_err(WHAT, "meta", e))?;
            let actual = meta
                .get(POLICY_KEY)
                .map_err(|e| self.db_err(WHAT, "meta/policy", e))?
                .map_or(0, |guard| guard.value().0);
            if actual >= revision {
                return Ok(Restore::NotBehind { actual });
            }
            meta.insert(POLICY_KEY, (revision, json))
                .map_err(|e| self.db_err(WHAT, "meta/policy", e))?;
            self.record_and_prune(txn, WHAT, revision, record, retention)?;
            Ok(Restore::Restored { from: actual })
        })?;
        if matches!(done, Restore::Restored { .. }) {
            let _ = self.changes.send(Change::Policy { revision });
        }
        Ok(done)
    }

    fn load_history_sync(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        const WHAT: &str = "reading the policy history";
        let db = self.database()?;
        let read = db
            .begin_read()
            .map_err(|e| self.db_err(WHAT, "history", e))?;
        let history = read
            .open_table(HISTORY)
            .map_err(|e| self.db_err(WHAT, "history", e))?;
        let mut out = Vec::new();
        let iter = history
            .range::<u64>((
                std::ops::Bound::Unbounded,
                before.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            ))
            .map_err(|e| self.db_err(WHAT, "history", e))?;
        for item in iter.rev().take(limit) {
            let (revision, record) = item.map_err(|e| self.db_err(WHAT, "history", e))?;
            out.push(HistoryRecord {
                revision: revision.value(),
                json: record.value().to_owned(),
            });
        }
        Ok(out)
    }

    fn put_entries_sync(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError> {
        const WHAT: &str = "writing list entries";
        let _writer = self.lock_writer();
        let now = SystemTime::now();
        let purged = self.write_txn(WHAT, |txn| {
            let mut table = self.open_entries(txn)?;
            let purged = self.purge_list(&mut table, list, now)?;
            for entry in entries {
                table
                    .insert(
                        (list, entry.key.as_str()),
                        (entry.value.as_str(), encode_expiry(entry.expires_at)),
                    )
                    .map_err(|e| self.db_err(WHAT, list, e))?;
            }
            Ok(purged)
        })?;
        {
            let mut mirror = self.mirror_write();
            let map = match mirror.get_mut(list) {
                Some(map) => map,
                None => mirror.entry(list.to_owned()).or_default(),
            };
            for key in &purged {
                map.remove(key);
            }
            for entry in entries {
                // Through the on-disk encoding, so that memory matches what a reopen would load.
                let at = decode_expiry(encode_expiry(entry.expires_at));
                map.insert(&entry.key, &entry.value, at);
            }
            if map.is_empty() {
                mirror.remove(list);
            }
        }
        let _ = self.changes.send(Change::List {
            list: list.to_owned(),
        });
        Ok(())
    }

    fn remove_entries_sync(&self, list: &str, keys: &[String]) -> Result<usize, StoreError> {
        const WHAT: &str = "removing list entries";
        let _writer = self.lock_writer();
        let now = SystemTime::now();
        let (purged, removed) = self.write_txn(WHAT, |txn| {
            let mut table = self.open_entries(txn)?;
            // Expired entries go first, so they are not counted as removed below.
            let purged = self.purge_list(&mut table, list, now)?;
            let mut removed = 0usize;
            for key in keys {
                let old = table
                    .remove((list, key.as_str()))
                    .map_err(|e| self.db_err(WHAT, list, e))?;
                if old.is_some_and(|guard| !expired(guard.value().1, now)) {
                    removed += 1;
                }
            }
            Ok((purged, removed))
        })?;
        {
            let mut mirror = self.mirror_write();
            if let Some(map) = mirror.get_mut(list) {
                for key in purged.iter().chain(keys) {
                    map.remove(key);
                }
                if map.is_empty() {
                    mirror.remove(list);
                }
            }
        }
        let _ = self.changes.send(Change::List {
            list: list.to_owned(),
        });
        Ok(removed)
    }

    fn list_entries_sync(&self, list: &str) -> Vec<Entry> {
        let now = SystemTime::now();
        let mut out: Vec<Entry> = self.mirror_read().get(list).map_or_else(Vec::new, |map| {
            map.iter()
                .filter(|(_, _, at)| live(*at, now))
                .map(|(key, value, at)| Entry {
                    key,
                    value: value.to_string(),
                    expires_at: at,
                })
                .collect()
        });
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Deletes the expired entries of `list` inside `table`'s transaction and returns their keys.
    ///
    /// They are found in the mirror, not by reading the list from disk: the caller holds the
    /// writer lock, under which the mirror holds exactly what is committed (every write updates
    /// it after its commit, under that lock), and the mirror keeps the expiry of the entries that
    /// have one apart. So a write to a list of a million entries without expiry reads none of
    /// them (reading them all took about 0.3 s per write, and made an import's batches slower
    /// as the list grew).
    fn purge_list(
        &self,
        table: &mut EntriesTable<'_>,
        list: &str,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        const WHAT: &str = "purging expired entries";
        let expired_keys = self
            .mirror_read()
            .get(list)
            .map_or_else(Vec::new, |entries| entries.expired_keys(now));
        for key in &expired_keys {
            table
                .remove((list, key.as_str()))
                .map_err(|e| self.db_err(WHAT, list, e))?;
        }
        Ok(expired_keys)
    }

    /// Writes (or with an expiry already past, deletes) the record `key`, and deletes every
    /// expired record in the same transaction.
    fn put_record_sync(
        &self,
        key: &str,
        value: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        const WHAT: &str = "writing a record";
        let _writer = self.lock_writer();
        let now = SystemTime::now();
        self.write_txn(WHAT, |txn| {
            let mut records = txn
                .open_table(RECORDS)
                .map_err(|e| self.db_err(WHAT, "records", e))?;
            records
                .retain(|_, (_, ms)| !expired(ms, now))
                .map_err(|e| self.db_err(WHAT, "records", e))?;
            if live(expires_at, now) {
                records
                    .insert(key, (value, encode_expiry(expires_at)))
                    .map_err(|e| self.db_err(WHAT, key, e))?;
            } else {
                records.remove(key).map_err(|e| self.db_err(WHAT, key, e))?;
            }
            Ok(())
        })
    }

    /// The live records whose key starts with `prefix`, sorted by key (redb's order).
    fn records_sync(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        const WHAT: &str = "reading records";
        let now = SystemTime::now();
        let db = self.database()?;
        let read = db
            .begin_read()
            .map_err(|e| self.db_err(WHAT, "records", e))?;
        let records = read
            .open_table(RECORDS)
            .map_err(|e| self.db_err(WHAT, "records", e))?;
        let range = records
            .range(prefix..)
            .map_err(|e| self.db_err(WHAT, "records", e))?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.map_err(|e| self.db_err(WHAT, "records", e))?;
            let key = k.value();
            // Keys are ordered, so those with the prefix are one run from `prefix` on.
            if !key.starts_with(prefix) {
                break;
            }
            let (value, ms) = v.value();
            if !expired(ms, now) {
                out.push((key.to_owned(), value.to_owned()));
            }
        }
        Ok(out)
    }

    fn get_record_sync(&self, key: &str) -> Result<Option<String>, StoreError> {
        const WHAT: &str = "reading a record";
        let db = self.database()?;
        let read = db
            .begin_read()
            .map_err(|e| self.db_err(WHAT, "records", e))?;
        let records = read
            .open_table(RECORDS)
            .map_err(|e| self.db_err(WHAT, "records", e))?;
        let found = records.get(key).map_err(|e| self.db_err(WHAT, key, e))?;
        Ok(found.and_then(|guard| {
            let (value, ms) = guard.value();
            (!expired(ms, SystemTime::now())).then(|| value.to_owned())
        }))
    }

    fn delete_record_sync(&self, key: &str) -> Result<(), StoreError> {
        const WHAT: &str = "deleting a record";
        let _writer = self.lock_writer();
        self.write_txn(WHAT, |txn| {
            txn.open_table(RECORDS)
                .map_err(|e| self.db_err(WHAT, "records", e))?
                .remove(key)
                .map_err(|e| self.db_err(WHAT, key, e))?;
            Ok(())
        })
    }

    /// The open database, or [`StoreError::Unavailable`] while it is handed over to a new
    /// graygate process. Held for the whole of a transaction, so that [`EmbeddedStore::hand_over`]
    /// waits for the transactions in progress and closes the file after the last one.
    fn database(&self) -> Result<Db<'_>, StoreError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(StoreError::unavailable(
                STORE,
                format!(
                    "{} is handed over to a new graygate process (an upgrade is in progress); retry in a moment",
                    self.path.display()
                ),
            ));
        }
        Ok(Db(guard))
    }

    /// Closes the database file so that a new graygate process can open it (an upgrade), after
    /// the transactions in progress. Lookups and list reads go on from memory; writes fail with
    /// [`StoreError::Unavailable`] until [`EmbeddedStore::take_back`]. Blocks while a write
    /// finishes.
    pub fn hand_over_sync(&self) {
        let _writer = self.lock_writer();
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Dropping the last handle closes the file and releases redb's lock on it.
        *db = None;
    }

    /// Opens the database file again after [`EmbeddedStore::hand_over`] (the upgrade failed and
    /// this process goes on), reloading the lists, which the new process may have changed.
    pub fn take_back_sync(&self) -> Result<(), StoreError> {
        let _writer = self.lock_writer();
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        if db.is_some() {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let fresh = EmbeddedStore::open(dir)?;
        *self.mirror_write() = std::mem::take(&mut *fresh.mirror_write());
        *db = fresh.db.write().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        // Each update is one statement on plain data: a panic elsewhere leaves nothing half-done.
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_entries<'txn>(
        &self,
        txn: &'txn WriteTransaction,
    ) -> Result<EntriesTable<'txn>, StoreError> {
        txn.open_table(ENTRIES)
            .map_err(|e| self.db_err("opening table entries", "entries", e))
    }

    /// Runs `body` in one write transaction and commits it if `body` succeeds; aborts it (nothing
    /// changes) if `body` fails.
    fn write_txn<T>(
        &self,
        what: &str,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.database()?;
        let txn = db
            .begin_write()
            .map_err(|e| self.db_err(what, "transaction", e))?;
        match body(&txn) {
            Ok(value) => {
                txn.commit().map_err(|e| self.db_err(what, "commit", e))?;
                Ok(value)
            }
            Err(err) => {
                // The caller's error is the one that matters; an abort failure leaves nothing
                // committed either.
                let _ = txn.abort();
                Err(err)
            }
        }
    }

    /// Maps a redb error to a [`StoreError`] naming the operation, the table or list (`key`) and
    /// the database file.
    fn db_err(&self, what: &str, key: &str, err: impl Into<redb::Error>) -> StoreError {
        let err: redb::Error = err.into();
        match err {
            redb::Error::Corrupted(_)
            | redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TableIsNotMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. } => {
                StoreError::bad_data(STORE, format!("{key} in {}", self.path.display()), what)
                    .with_source(err)
            }
            _ => {
                StoreError::unavailable(STORE, format!("{what} ({key}) in {}", self.path.display()))
                    .with_source(err)
            }
        }
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        // The mutex guards no data, only ordering: a panic while holding it leaves nothing broken.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mirror_read(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror
            .read()
            .expect("embedded store mirror lock poisoned")
    }

    fn mirror_write(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror
            .write()
            .expect("embedded store mirror lock poisoned")
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        STORE
    }

    async fn load_policy(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.load_policy_sync()
    }

    async fn save_policy(&self, json: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        self.save_policy_sync(json, expected, None)
    }

    async fn save_policy_recorded(
        &self,
        json: &str,
        expected: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<u64, StoreError> {
        self.save_policy_sync(json, Some(expected), Some((record, retention)))
    }

    async fn restore_policy(
        &self,
        json: &str,
        revision: u64,
        record: &str,
        retention: HistoryRetention,
    ) -> Result<Restore, StoreError> {
        self.restore_policy_sync(json, revision, record, retention)
    }

    async fn load_history(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.load_history_sync(before, limit)
    }

    fn lookup_local(&self, list: &str, key: &str) -> Option<Option<Arc<str>>> {
        Some(self.mirror_read().get(list).and_then(|map| map.get(key)))
    }

    async fn lookup(&self, list: &str, key: &str) -> Result<Option<Arc<str>>, StoreError> {
        Ok(self.lookup_local(list, key).flatten())
    }

    async fn put_entries(&self, list: &str, entries: &[Entry]) -> Result<(), StoreError> {
        self.put_entries_sync(list, entries)
    }

    async fn remove_entries(&self, list: &str, keys: &[String]) -> Result<usize, StoreError> {
        self.remove_entries_sync(list, keys)
    }

    async fn list_entries(&self, list: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(self.list_entries_sync(list))
    }

    async fn put_record(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let expires_at = match ttl {
            None => None,
            // Ends now: `put_record_sync` deletes it.
            Some(ttl) if ttl.is_zero() => Some(now),
            // A TTL too long to represent keeps the record for good.
            Some(ttl) => now.checked_add(ttl),
        };
        self.put_record_sync(key, value, expires_at)
    }

    async fn get_record(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.get_record_sync(key)
    }

    async fn records(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.records_sync(prefix)
    }

    async fn delete_record(&self, key: &str) -> Result<(), StoreError> {
        self.delete_record_sync(key)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut leases = self.lock_leases();
        if let Some(lease) = leases.get(name) {
            if lease.holder != holder && lease.until > now {
                return Ok(false);
            }
        }
        let until = now + ttl.min(LEASE_TTL_MAX);
        leases.insert(
            name.to_owned(),
            Lease {
                holder: holder.to_owned(),
                until,
            },
        );
        Ok(true)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut leases = self.lock_leases();
        if leases.get(name).is_some_and(|lease| lease.holder == holder) {
            leases.remove(name);
        }
        Ok(())
    }

    async fn hand_over(&self) -> Result<(), StoreError> {
        self.hand_over_sync();
        Ok(())
    }

    async fn take_back(&self) -> Result<(), StoreError> {
        self.take_back_sync()
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// Expiry as stored: Unix milliseconds rounded up (an entry never ends before its TTL), 0 for
/// "never", at least 1 for any time (times before 1970 are long past anyway).
fn encode_expiry(at: Option<SystemTime>) -> u64 {
    let Some(at) = at else { return 0 };
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            let ceil = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
            u64::try_from(ceil).unwrap_or(u64::MAX).max(1)
        }
        Err(_) => 1,
    }
}

/// Inverse of [`encode_expiry`]; a time too far to represent counts as "never".
fn decode_expiry(ms: u64) -> Option<SystemTime> {
    if ms == 0 {
        None
    } else {
        UNIX_EPOCH.checked_add(Duration::from_millis(ms))
    }
}

/// Whether an entry expiring at `at` still counts at `now`.
fn live(at: Option<SystemTime>, now: SystemTime) -> bool {
    at.is_none_or(|at| at > now)
}

/// Whether a stored expiry (see [`encode_expiry`]) is past at `now`; same rule as [`live`].
fn expired(ms: u64, now: SystemTime) -> bool {
    !live(decode_expiry(ms), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(dir.path()).expect("open store")
    }

    fn keys(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.key.as_str()).collect()
    }

    fn past() -> Option<SystemTime> {
        Some(SystemTime::now() - Duration::from_secs(1))
    }

    /// Revisions, conflicts, and the order and bound of the history are the store contract's
    /// (`tests/e2e/stores/contract.rs`, run against every store, this one included); what is the
    /// embedded store's own is that the history outlives the process, as the policy does.
    #[tokio::test]
    async fn history_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let keep = HistoryRetention::default();
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
        drop(store);
        let reopened = open(&dir);
        let texts: Vec<String> = reopened
            .load_history(None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.json)
            .collect();
        assert_eq!(texts, ["r2", "r1"]);
        let stored = reopened.load_policy().await.unwrap().unwrap();
        assert_eq!((stored.revision, stored.json.as_str()), (2, "p2"));
    }

    #[tokio::test]
    async fn conflict_leaves_the_policy_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.save_policy("first", None).await.unwrap();
        let mut changes = store.subscribe();

        let err = store.save_policy("second", Some(0)).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 0,
                    actual: 1
                }
            ),
            "{err:?}"
        );
        let err = store.save_policy("second", Some(7)).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 7,
                    actual: 1
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "policy revision conflict: expected 7, store has 1"
        );

        let stored = store.load_policy().await.unwrap().unwrap();
        assert_eq!((stored.revision, stored.json.as_str()), (1, "first"));
        assert!(changes.try_recv().is_err(), "a conflict must not notify");

        // Expecting a revision on an empty store conflicts with 0.
        let dir2 = tempfile::tempdir().unwrap();
        let empty = open(&dir2);
        let err = empty.save_policy("x", Some(1)).await.unwrap_err();
        assert!(matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: 0
            }
        ));
        assert_eq!(empty.load_policy().await.unwrap(), None);
    }

    #[tokio::test]
    async fn entries_put_lookup_remove_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(store.lookup_local("ips", "a"), Some(None));

        store
            .put_entries(
                "ips",
                &[
                    Entry::new("c", "3", None),
                    Entry::new("a", "1", None),
                    Entry::new("b", "2", Some(Duration::from_secs(3600))),
                ],
            )
            .await
            .unwrap();
        store
            .put_entries("tokens", &[Entry::new("a", "user-a", None)])
            .await
            .unwrap();

        assert_eq!(store.lookup_local("ips", "a"), Some(Some(Arc::from("1"))));
        assert_eq!(
            store.lookup("ips", "b").await.unwrap(),
            Some(Arc::from("2"))
        );
        assert_eq!(store.lookup_local("ips", "zz"), Some(None));
        assert_eq!(store.lookup("nolist", "a").await.unwrap(), None);
        assert_eq!(
            store.lookup_local("tokens", "a"),
            Some(Some(Arc::from("user-a")))
        );

        let listed = store.list_entries("ips").await.unwrap();
        assert_eq!(keys(&listed), ["a", "b", "c"]);
        assert!(listed[1].expires_at.is_some());
        assert_eq!(listed[0].expires_at, None);
        assert_eq!(store.count("ips"), 3);
        assert_eq!(store.list_names(), ["ips", "tokens"]);

        // Replace a value.
        store
            .put_entries("ips", &[Entry::new("a", "one", None)])
            .await
            .unwrap();
        assert_eq!(store.lookup_local("ips", "a"), Some(Some(Arc::from("one"))));
        assert_eq!(store.count("ips"), 3);

        // Remove: only existing keys count, other lists are untouched.
        let removed = store
            .remove_entries("ips", &["a".into(), "missing".into(), "a".into()])
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(store.lookup_local("ips", "a"), Some(None));
        assert_eq!(
            store.lookup_local("tokens", "a"),
            Some(Some(Arc::from("user-a")))
        );
        assert_eq!(keys(&store.list_entries("ips").await.unwrap()), ["b", "c"]);

        assert_eq!(
            store.remove_entries("tokens", &["a".into()]).await.unwrap(),
            1
        );
        assert_eq!(store.list_names(), ["ips"]);
        assert_eq!(store.count("tokens"), 0);
        assert!(store.list_entries("tokens").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn expired_entries_are_absent_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .put_entries(
                "ips",
                &[
                    Entry {
                        key: "old".into(),
                        value: "x".into(),
                        expires_at: past(),
                    },
                    Entry::new("new", "y", None),
                ],
            )
            .await
            .unwrap();
        store
            .put_entries(
                "gone",
                &[Entry {
                    key: "k".into(),
                    value: "v".into(),
                    expires_at: past(),
                }],
            )
            .await
            .unwrap();

        assert_eq!(store.lookup_local("ips", "old"), Some(None));
        assert_eq!(store.lookup("ips", "old").await.unwrap(), None);
        assert_eq!(keys(&store.list_entries("ips").await.unwrap()), ["new"]);
        assert_eq!(store.count("ips"), 1);
        assert_eq!(store.list_names(), ["ips"]);

        // Removing an expired key does not count it.
        assert_eq!(
            store.remove_entries("ips", &["old".into()]).await.unwrap(),
            0
        );
        // "gone/k" is still on disk until purged.
        assert_eq!(store.purge_expired().unwrap(), 1);
        assert_eq!(store.purge_expired().unwrap(), 0);
        assert_eq!(store.lookup_local("ips", "new"), Some(Some(Arc::from("y"))));
    }

    /// The expired entries a write deletes are found through the mirror: they must be gone from
    /// the disk, in the written list only.
    #[tokio::test]
    async fn a_write_deletes_the_lists_expired_entries_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let old = |key: &str| Entry {
            key: key.into(),
            value: "1".into(),
            expires_at: past(),
        };
        store
            .put_entries(
                "ips",
                &[
                    old("10.0.0.1"),
                    old("token"),
                    Entry::new("10.0.0.2", "1", None),
                ],
            )
            .await
            .unwrap();
        store
            .put_entries("other", &[old("10.0.0.1")])
            .await
            .unwrap();
        let on_disk = || {
            let read = store.database().unwrap().begin_read().unwrap();
            let table = read.open_table(ENTRIES).unwrap();
            let keys: Vec<(String, String)> = table
                .iter()
                .unwrap()
                .map(|item| {
                    let (k, _) = item.unwrap();
                    let (list, key) = k.value();
                    (list.to_owned(), key.to_owned())
                })
                .collect();
            keys
        };
        let pair = |l: &str, k: &str| (l.to_owned(), k.to_owned());
        assert_eq!(on_disk().len(), 4);

        store
            .put_entries("ips", &[Entry::new("10.0.0.3", "0", None)])
            .await
            .unwrap();
        assert_eq!(
            on_disk(),
            [
                pair("ips", "10.0.0.2"),
                pair("ips", "10.0.0.3"),
                pair("other", "10.0.0.1")
            ]
        );
        assert_eq!(store.remove_entries("other", &[]).await.unwrap(), 0);
        assert_eq!(on_disk().len(), 2);
        assert_eq!(store.purge_expired().unwrap(), 0);
    }

    #[tokio::test]
    async fn ttl_expires_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .put_entries(
                "ips",
                &[Entry::new("k", "v", Some(Duration::from_millis(50)))],
            )
            .await
            .unwrap();
        assert_eq!(store.lookup_local("ips", "k"), Some(Some(Arc::from("v"))));

        let deadline = Instant::now() + Duration::from_secs(5);
        while store.lookup_local("ips", "k") != Some(None) {
            assert!(Instant::now() < deadline, "entry did not expire");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.list_entries("ips").await.unwrap().is_empty());
        assert_eq!(store.count("ips"), 0);
        assert_eq!(store.purge_expired().unwrap(), 1);
        drop(store);

        let store = open(&dir);
        assert_eq!(store.purge_expired().unwrap(), 0);
        assert!(store.list_names().is_empty());
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let expires = SystemTime::now() + Duration::from_secs(3600);
        {
            let store = open(&dir);
            store.save_policy("p1", None).await.unwrap();
            store.save_policy("p2", Some(1)).await.unwrap();
            store
                .put_entries(
                    "ips",
                    &[
                        Entry::new("10.0.0.1", "gray", None),
                        Entry {
                            key: "10.0.0.2".into(),
                            value: "gray".into(),
                            expires_at: Some(expires),
                        },
                        Entry {
                            key: "10.0.0.3".into(),
                            value: "gray".into(),
                            expires_at: past(),
                        },
                    ],
                )
                .await
                .unwrap();
            store
                .put_entries("tokens", &[Entry::new("t", "u", None)])
                .await
                .unwrap();
            store.remove_entries("tokens", &["t".into()]).await.unwrap();
        }

        let store = open(&dir);
        assert_eq!(
            store.load_policy().await.unwrap(),
            Some(StoredPolicy {
                revision: 2,
                json: "p2".into()
            })
        );
        let listed = store.list_entries("ips").await.unwrap();
        assert_eq!(keys(&listed), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(listed[0].expires_at, None);
        let kept = listed[1].expires_at.unwrap();
        let drift = kept.duration_since(expires).unwrap_or_default();
        assert!(
            kept >= expires && drift < Duration::from_millis(1),
            "{drift:?}"
        );
        assert_eq!(
            store.lookup_local("ips", "10.0.0.1"),
            Some(Some(Arc::from("gray")))
        );
        assert_eq!(store.list_names(), ["ips"]);
        // The expired entry was purged at open.
        assert_eq!(store.purge_expired().unwrap(), 0);
        // Revisions continue where they were.
        assert_eq!(store.save_policy("p3", Some(2)).await.unwrap(), 3);
    }

    /// Put, expiry, listing and leases are the store contract's; what is the embedded store's own
    /// is that records outlive the process (without what expired meanwhile) and leases do not.
    #[tokio::test]
    async fn records_survive_reopen_and_leases_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(10);
        {
            let store = open(&dir);
            let mut changes = store.subscribe();
            store.put_record("kept", "k", None).await.unwrap();
            store.put_record("timed", "t", Some(ttl)).await.unwrap();
            // On disk with an expiry already past, as a record whose TTL ends while graygate is
            // down is found at the next open.
            let txn = store.database().unwrap().begin_write().unwrap();
            txn.open_table(RECORDS)
                .unwrap()
                .insert("gone", ("g", encode_expiry(past())))
                .unwrap();
            txn.commit().unwrap();
            store
                .put_record("zero", "z", Some(Duration::ZERO))
                .await
                .unwrap();
            assert_eq!(store.get_record("zero").await.unwrap(), None);
            assert!(store.acquire_lease("driver", "a", ttl).await.unwrap());
            assert!(changes.try_recv().is_err(), "records are not announced");
        }
        let store = open(&dir);
        assert_eq!(
            store.records("").await.unwrap(),
            [
                ("kept".to_owned(), "k".to_owned()),
                ("timed".to_owned(), "t".to_owned())
            ]
        );
        // The expired record was deleted at open, not only hidden.
        let read = store.database().unwrap().begin_read().unwrap();
        let table = read.open_table(RECORDS).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&table).unwrap(), 2);
        // The lease was held by the process that is gone.
        assert!(store.acquire_lease("driver", "b", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn every_write_notifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut changes = store.subscribe();
        let next = |rx: &mut broadcast::Receiver<Change>| rx.try_recv().expect("a change");

        store.save_policy("p", None).await.unwrap();
        assert_eq!(next(&mut changes), Change::Policy { revision: 1 });
        store.save_policy("p", Some(1)).await.unwrap();
        assert_eq!(next(&mut changes), Change::Policy { revision: 2 });
        store
            .put_entries("ips", &[Entry::new("a", "1", None)])
            .await
            .unwrap();
        assert_eq!(next(&mut changes), Change::List { list: "ips".into() });
        store.remove_entries("ips", &["a".into()]).await.unwrap();
        assert_eq!(next(&mut changes), Change::List { list: "ips".into() });
        assert!(changes.try_recv().is_err());
    }

    #[tokio::test]
    async fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let bad = file.join("data");
        let err = EmbeddedStore::open(&bad).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "{err}"
        );

        // A file that is not a redb database.
        let dir2 = tempfile::tempdir().unwrap();
        std::fs::write(dir2.path().join(DB_FILE), b"definitely not redb").unwrap();
        let err = EmbeddedStore::open(dir2.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains(DB_FILE), "{err}");
    }

    #[tokio::test]
    async fn a_handed_over_store_serves_lookups_and_refuses_writes_until_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.save_policy("first", None).await.unwrap();
        store
            .put_entries("ips", &[Entry::new("10.0.0.7", "1", None)])
            .await
            .unwrap();
        store.hand_over().await.unwrap();

        // Lookups and list reads go on from memory.
        assert_eq!(
            store.lookup_local("ips", "10.0.0.7"),
            Some(Some("1".into()))
        );
        assert_eq!(
            keys(&store.list_entries("ips").await.unwrap()),
            ["10.0.0.7"]
        );
        // Writes and reads of the file are refused, saying why.
        let err = store.save_policy("second", Some(1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("handed over to a new graygate process"),
            "{err}"
        );
        assert!(store.load_policy().await.is_err());

        // Another process (here: another handle) can open the file meanwhile and change it.
        {
            let next = open(&dir);
            assert_eq!(next.load_policy().await.unwrap().unwrap().json, "first");
            next.put_entries("ips", &[Entry::new("10.0.0.8", "1", None)])
                .await
                .unwrap();
        }

        // Taken back: the file is read again, the other handle's entry included.
        store.take_back().await.unwrap();
        assert_eq!(
            store.lookup_local("ips", "10.0.0.8"),
            Some(Some("1".into()))
        );
        assert_eq!(store.save_policy("second", Some(1)).await.unwrap(), 2);
        // Taking back what is held is nothing.
        store.take_back().await.unwrap();
        assert_eq!(store.load_policy().await.unwrap().unwrap().revision, 2);
    }

    #[tokio::test]
    async fn second_open_of_the_same_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(&dir);
        let err = EmbeddedStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(
            matches!(
                err.cause::<redb::Error>(),
                Some(redb::Error::DatabaseAlreadyOpen)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn open_errors_keep_their_cause() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = EmbeddedStore::open(&file.join("data")).unwrap_err();
        let io = err
            .cause::<std::io::Error>()
            .expect("the I/O error is the source");
        // The OS error is the source, not part of the message: a report shows it once.
        let os_text = io.to_string();
        assert!(!err.to_string().contains(&os_text), "{err}");
        assert_eq!(err.chain().to_string().matches(&os_text).count(), 1);
        assert!(
            err.to_string().contains("cannot create the data directory"),
            "{err}"
        );

        let dir2 = tempfile::tempdir().unwrap();
        std::fs::write(dir2.path().join(DB_FILE), b"definitely not redb").unwrap();
        let err = EmbeddedStore::open(dir2.path()).unwrap_err();
        assert!(err.source().is_some(), "{err:?}");
        assert!(err.cause::<redb::Error>().is_some(), "{err:?}");
    }

    #[test]
    fn racing_writers_lose_with_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        store.save_policy_sync("base", None, None).unwrap();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let record = format!("r{i}");
                    let retention = HistoryRetention::default();
                    store.save_policy_sync(&format!("doc {i}"), Some(1), Some((&record, retention)))
                })
            })
            .collect();
        let mut won = 0;
        for writer in writers {
            match writer.join().unwrap() {
                Ok(revision) => {
                    assert_eq!(revision, 2);
                    won += 1;
                }
                Err(e) => {
                    assert!(e.is_lost_race(), "{e:?}");
                    let want = "policy revision conflict: expected 1, store has 2";
                    assert_eq!(e.to_string(), want);
                }
            }
        }
        assert_eq!(won, 1);
        // Only the winner's record was kept.
        let history = store.load_history_sync(None, 10).unwrap();
        assert_eq!(history.len(), 1, "{history:?}");
    }

    #[tokio::test]
    async fn creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        let store = EmbeddedStore::open(&nested).unwrap();
        assert_eq!(store.path(), nested.join(DB_FILE));
        assert!(nested.join(DB_FILE).is_file());
    }

    #[test]
    fn expiry_encoding() {
        assert_eq!(encode_expiry(None), 0);
        assert_eq!(decode_expiry(0), None);
        assert_eq!(encode_expiry(Some(UNIX_EPOCH)), 1);
        assert_eq!(encode_expiry(Some(UNIX_EPOCH - Duration::from_secs(5))), 1);
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(encode_expiry(Some(t)), 1_700_000_000_123);
        assert_eq!(decode_expiry(1_700_000_000_123), Some(t));
        // Rounded up, never down.
        assert_eq!(
            encode_expiry(Some(t + Duration::from_nanos(1))),
            1_700_000_000_124
        );
        assert!(expired(1, SystemTime::now()));
        assert!(!expired(0, SystemTime::now()));
    }
}
