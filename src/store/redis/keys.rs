//! Where the Redis store keeps its data: the key names, the change announcements and the Lua
//! script that writes the policy. Everything here is pure (no connection), so that the layout is
//! one place to read and to test.
//!
//! # Layout in Redis
//! - `<key_prefix>policy` (default `graygate:policy`): a hash with two fields, `revision` and
//!   `policy` (the JSON text). A Lua script ([`SAVE_POLICY_LUA`]) checks the expected revision,
//!   writes both fields and publishes the change in one atomic step: two writers can never
//!   interleave half-updates, and no instance can see the new document without its revision.
//! - A list entry is a plain string key `<list prefix><key>`, so that existing data and other
//!   tools (`redis-cli SET TOKEN_abc 42`) work as they are. A list's prefix comes from
//!   [`RedisConfig::lists`](super::RedisConfig::lists); a list not named there lives under
//!   `<key_prefix>list:<list>:`. The OpenResty layout (`GET TOKEN_<token>`,
//!   `GET Grayscale_Range`) is a list with prefix `""`.
//! - `<key_prefix>history`: the policy history, a sorted set of records (JSON) scored by their
//!   revision, so that a page below a revision is one `ZREVRANGEBYSCORE`; added and pruned to the
//!   [`HistoryRetention`](crate::store::HistoryRetention) by the same Lua script that writes the
//!   policy. The policy hash's field `history_bytes` keeps the records' summed size, so that the
//!   byte bound is checked without reading them. Earlier versions of graygate kept the records in a list
//!   (newest first): the first script that finds a list turns it into the sorted set
//!   ([`HISTORY_UPGRADE_LUA`]).
//! - `<key_prefix>changes`: the pub/sub channel on which every write is announced, as JSON:
//!   `{"revision":N}` for the policy, `{"list":"name"}` for list writes made through graygate
//!   ([`Notice`]).
//! - `<key_prefix>record:<key>`: a record ([`Store::put_record`](crate::store::Store::put_record)),
//!   a hash whose field `value` holds the record's text, expiring by `PEXPIRE` (the server's
//!   clock). A hash and not a string: a list whose prefix is `""` (the OpenResty layout reads
//!   `TOKEN_*` and `Grayscale_Range` that way) takes every *string* key for one of its entries, and
//!   records must never show up among a list's entries; `MGET` skips them as it skips the policy.
//! - `<key_prefix>record-index`: a sorted set of every record's key, all scores 0, so that the
//!   records under a prefix are one lexical range (`ZRANGEBYLEX`) and listing them never scans a
//!   database that holds millions of list keys; records that expired leave it when next listed.
//! - `<key_prefix>lease:<name>`: a lease, a hash whose field `holder` names its holder, expiring by
//!   `PEXPIRE`; taken and renewed by [`ACQUIRE_LEASE_LUA`], given up by [`RELEASE_LEASE_LUA`], so
//!   that the check of the holder and the write are one atomic step.
//!
//! Nothing graygate writes under `<key_prefix>` shares a name with another: `policy`, `history`
//! and `changes` are exact names; lists without a configured prefix, records and leases each have
//! their own `list:`, `record:` and `lease:` namespace.

use std::collections::HashMap;

/// Turns a history kept as a list (newest first, as graygate kept it before the sorted set) into
/// the sorted set, and sums the records' sizes into the policy hash's `history_bytes`; does
/// nothing to a sorted set. A Lua function `upgrade_history(history, policy)` that the scripts
/// reading or writing the history call first. A record's revision is read from its start
/// (graygate writes `{"revision":N,` first) or else by decoding it; one without a revision is
/// dropped. Also defines `record_history(history, policy, revision, record, keep, max_bytes)`:
/// adds a record and deletes the oldest ones the retention no longer keeps (the Lua twin of
/// [`HistoryRetention::kept`](crate::store::HistoryRetention::kept)), keeping `history_bytes`;
/// a save and a restore both record through it.
pub(super) const HISTORY_UPGRADE_LUA: &str = r#"
local function revision_of(record)
  local r = string.match(record, '^{"revision":(%d+)')
  if r then return tonumber(r) end
  local ok, decoded = pcall(cjson.decode, record)
  if ok and type(decoded) == 'table' then return tonumber(decoded['revision']) end
  return nil
end
local function upgrade_history(history, policy)
  if redis.call('TYPE', history)['ok'] ~= 'list' then
    return
  end
  local records = redis.call('LRANGE', history, 0, -1)
  redis.call('DEL', history)
  local bytes = 0
  for _, record in ipairs(records) do
    local revision = revision_of(record)
    if revision then
      redis.call('ZADD', history, revision, record)
      bytes = bytes + #record
    end
  end
  redis.call('HSET', policy, 'history_bytes', string.format('%d', bytes))
end
local function record_history(history, policy, revision, record, keep, max_bytes)
  upgrade_history(history, policy)
  local count = redis.call('ZCARD', history)
  local bytes = 0
  if count > 0 then
    bytes = tonumber(redis.call('HGET', policy, 'history_bytes') or '0') or 0
  end
  redis.call('ZADD', history, revision, record)
  count = count + 1
  bytes = bytes + #record
  while count > 1 and (count > keep or bytes > max_bytes) do
    local oldest = redis.call('ZPOPMIN', history)
    bytes = bytes - #oldest[1]
    count = count - 1
  end
  redis.call('HSET', policy, 'history_bytes', string.format('%d', bytes))
end
"#;

/// Checks the expected revision, writes the new document with the next revision, records the
/// change in the history and deletes the oldest records the retention no longer keeps (the Lua
/// twin of [`HistoryRetention::kept`](crate::store::HistoryRetention::kept)), and announces it,
/// all in one atomic step. `KEYS[1]` policy hash, `KEYS[2]` history sorted set, `ARGV[1]` JSON,
/// `ARGV[2]` expected revision or `""`, `ARGV[3]` changes channel, `ARGV[4]` history record or
/// `""` for none, `ARGV[5]` how many records to keep, `ARGV[6]` how many bytes of records to keep.
/// Returns `{1, new revision}`, or `{0, stored revision}` when the write lost the race (the stored
/// revision is not the expected one). A revision field that is not a number fails with an error
/// whose code is [`BAD_REVISION_CODE`]. Runs after [`HISTORY_UPGRADE_LUA`].
pub(super) const SAVE_POLICY_LUA: &str = r#"
local stored = redis.call('HGET', KEYS[1], 'revision')
local current = 0
if stored then
  current = tonumber(stored)
  if current == nil then
    return redis.error_reply('GRAYGATE revision field is not a number: ' .. stored)
  end
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {0, current}
end
local nextrev = string.format('%d', current + 1)
redis.call('HSET', KEYS[1], 'revision', nextrev, 'policy', ARGV[1])
if ARGV[4] ~= '' then
  record_history(KEYS[2], KEYS[1], nextrev, ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
end
redis.call('PUBLISH', ARGV[3], '{"revision":' .. nextrev .. '}')
return {1, current + 1}
"#;

/// Puts a policy back at a given revision when the store lost it (restarted empty, or restored
/// from an older backup): checks that the stored revision is lower than `ARGV[2]` (none: 0),
/// writes the document at that revision, records `ARGV[4]` in the history at that revision,
/// prunes as [`SAVE_POLICY_LUA`] does, and announces it, all in one atomic step, so that every
/// instance may try and the newest revision wins. `KEYS[1]` policy hash, `KEYS[2]` history,
/// `ARGV[1]` JSON, `ARGV[2]` the revision, `ARGV[3]` changes channel, `ARGV[4]` history record,
/// `ARGV[5]` how many records to keep, `ARGV[6]` how many bytes. Returns `{1, revision the store
/// was at}` or `{0, stored revision}` when it is not behind. Runs after [`HISTORY_UPGRADE_LUA`].
pub(super) const RESTORE_POLICY_LUA: &str = r#"
local stored = redis.call('HGET', KEYS[1], 'revision')
local current = 0
if stored then
  current = tonumber(stored)
  if current == nil then
    return redis.error_reply('GRAYGATE revision field is not a number: ' .. stored)
  end
end
local target = tonumber(ARGV[2])
if current >= target then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'policy', ARGV[1])
record_history(KEYS[2], KEYS[1], ARGV[2], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
redis.call('PUBLISH', ARGV[3], '{"revision":' .. ARGV[2] .. '}')
return {1, current}
"#;

/// The newest history records below a revision: `KEYS[1]` history, `KEYS[2]` policy hash,
/// `ARGV[1]` the revision (exclusive) or `""` for the newest, `ARGV[2]` how many at most. Returns
/// `record, revision` pairs, newest first. Runs after [`HISTORY_UPGRADE_LUA`].
pub(super) const LOAD_HISTORY_LUA: &str = r#"
upgrade_history(KEYS[1], KEYS[2])
local below = '+inf'
if ARGV[1] ~= '' then
  below = '(' .. ARGV[1]
end
return redis.call('ZREVRANGEBYSCORE', KEYS[1], below, '-inf', 'WITHSCORES', 'LIMIT', 0, ARGV[2])
"#;

/// Takes the lease `KEYS[1]` for holder `ARGV[1]` for `ARGV[2]` milliseconds, or renews it when
/// `ARGV[1]` holds it. Returns 1 when `ARGV[1]` holds the lease after the call, 0 when another
/// holder has it (nothing changes then). An expired lease is gone (Redis deleted the key), so
/// anyone may take it.
pub(super) const ACQUIRE_LEASE_LUA: &str = r#"
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Deletes the lease `KEYS[1]` if holder `ARGV[1]` holds it. Returns 1 when it did, 0 otherwise.
pub(super) const RELEASE_LEASE_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// The value of each record `KEYS[i]` (field `ARGV[1]` of its hash), in order: nil for a key
/// that is gone (expired, or deleted by hand) or holds something else than a hash (not a record
/// graygate wrote), so that one foreign key cannot fail a whole listing.
pub(super) const GET_RECORDS_LUA: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('HGET', key, ARGV[1])
  if type(value) ~= 'string' then
    value = false
  end
  out[i] = value
end
return out
"#;

/// The field of a record's hash that holds its value.
pub(super) const RECORD_FIELD: &str = "value";

/// The error code (first word of the error reply) with which [`SAVE_POLICY_LUA`] refuses a policy
/// hash it did not write.
pub(super) const BAD_REVISION_CODE: &str = "GRAYGATE";

/// The names of everything the store reads and writes in one Redis database.
#[derive(Debug)]
pub(super) struct Keys {
    /// Prefix of graygate's own keys.
    pub key_prefix: String,
    /// Configured lists: name -> key prefix.
    pub lists: HashMap<String, String>,
    /// `<key_prefix>list:`: lists not in `lists` live under `<this><list>:`.
    pub default_list_prefix: String,
    /// `<key_prefix>policy`: the policy hash.
    pub policy: String,
    /// `<key_prefix>history`: the policy history, a sorted set by revision.
    pub history: String,
    /// `<key_prefix>changes`: the pub/sub channel of announcements.
    pub channel: String,
    /// `__keyspace@<db>__:`, the channel prefix of keyspace notifications.
    pub keyspace_prefix: String,
    /// `<key_prefix>record:`: record `k` is the hash `<this>k`.
    pub records: String,
    /// `<key_prefix>record-index`: a sorted set of every record key (all scores 0, so that a
    /// prefix is a lexical range): listing records reads it instead of scanning the database,
    /// which on the original layouts holds millions of list keys.
    pub record_index: String,
    /// `<key_prefix>lease:`: lease `n` is the hash `<this>n`.
    pub leases: String,
}

impl Keys {
    /// The layout under `key_prefix` in database `db`.
    pub fn new(key_prefix: String, lists: HashMap<String, String>, db: i64) -> Self {
        Keys {
            default_list_prefix: format!("{key_prefix}list:"),
            policy: format!("{key_prefix}policy"),
            history: format!("{key_prefix}history"),
            channel: format!("{key_prefix}changes"),
            keyspace_prefix: format!("__keyspace@{db}__:"),
            records: format!("{key_prefix}record:"),
            record_index: format!("{key_prefix}record-index"),
            leases: format!("{key_prefix}lease:"),
            key_prefix,
            lists,
        }
    }

    /// The Redis key prefix of `list`'s entries.
    pub fn list_prefix(&self, list: &str) -> String {
        match self.lists.get(list) {
            Some(prefix) => prefix.clone(),
            None => format!("{}{list}:", self.default_list_prefix),
        }
    }

    /// The Redis key of `key` in `list`.
    pub fn entry(&self, list: &str, key: &str) -> String {
        match self.lists.get(list) {
            Some(prefix) => format!("{prefix}{key}"),
            None => format!("{}{list}:{key}", self.default_list_prefix),
        }
    }

    /// The Redis key of the record `key`.
    pub fn record(&self, key: &str) -> String {
        format!("{}{key}", self.records)
    }

    /// The Redis key of the lease `name`.
    pub fn lease(&self, name: &str) -> String {
        format!("{}{name}", self.leases)
    }

    /// Whether `redis_key` is one of graygate's own keys (policy, history, a record, a lease),
    /// which no list holds as an entry, even a list whose prefix covers every key.
    pub fn is_own(&self, redis_key: &str) -> bool {
        redis_key == self.policy
            || redis_key == self.history
            || redis_key == self.record_index
            || redis_key.starts_with(self.records.as_str())
            || redis_key.starts_with(self.leases.as_str())
    }

    /// The lists (and keys in them) that the Redis key `redis_key` belongs to: none for one of
    /// graygate's own keys ([`Keys::is_own`]), so that writing a record tells no list's cache
    /// that an entry changed.
    pub fn owners(&self, redis_key: &str) -> Vec<(String, String)> {
        if self.is_own(redis_key) {
            return Vec::new();
        }
        let mut out: Vec<(String, String)> = self
            .lists
            .iter()
            .filter_map(|(list, prefix)| {
                let key = redis_key.strip_prefix(prefix.as_str())?;
                Some((list.clone(), key.to_owned()))
            })
            .collect();
        if let Some((list, key)) = redis_key
            .strip_prefix(self.default_list_prefix.as_str())
            .and_then(|rest| rest.split_once(':'))
        {
            if !self.lists.contains_key(list) {
                out.push((list.to_owned(), key.to_owned()));
            }
        }
        out
    }

    /// Every list prefix this store reads, for tracking and keyspace subscriptions; `None` when
    /// one of them is empty, i.e. every key.
    pub fn watched_prefixes(&self) -> Option<Vec<String>> {
        covering_prefixes(
            self.lists
                .values()
                .map(String::as_str)
                .chain([self.default_list_prefix.as_str()]),
        )
    }

    /// The keyspace notification patterns that cover every list key.
    pub fn keyspace_patterns(&self) -> Vec<String> {
        match self.watched_prefixes() {
            None => vec![format!("{}*", self.keyspace_prefix)],
            Some(prefixes) => prefixes
                .iter()
                .map(|p| format!("{}{}*", self.keyspace_prefix, glob_escape(p)))
                .collect(),
        }
    }
}

/// A change announced on the changes channel.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Notice {
    /// Set for a policy write: the new revision.
    pub revision: Option<u64>,
    /// Set for a list write made through graygate: the list's name.
    pub list: Option<String>,
}

impl Notice {
    /// The announcement of a write to `list` (the policy's is made by [`SAVE_POLICY_LUA`]).
    pub fn list(list: &str) -> String {
        serde_json::json!({ "list": list }).to_string()
    }
}

/// `s` with the glob characters of `SCAN MATCH`/`PSUBSCRIBE` escaped.
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The smallest set of prefixes that covers `prefixes` (Redis rejects overlapping tracking
/// prefixes), or `None` when one of them is empty, i.e. every key.
pub(super) fn covering_prefixes<'a>(
    prefixes: impl IntoIterator<Item = &'a str>,
) -> Option<Vec<String>> {
    let mut all: Vec<&str> = prefixes.into_iter().collect();
    if all.iter().any(|p| p.is_empty()) {
        return None;
    }
    all.sort_by_key(|p| p.len());
    let mut kept: Vec<String> = Vec::new();
    for p in all {
        if !kept.iter().any(|k| p.starts_with(k.as_str())) {
            kept.push(p.to_owned());
        }
    }
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(lists: &[(&str, &str)]) -> Keys {
        let lists = lists
            .iter()
            .map(|(l, p)| (l.to_string(), p.to_string()))
            .collect();
        Keys::new("graygate:".to_owned(), lists, 2)
    }

    #[test]
    fn tracking_prefixes_never_overlap() {
        assert_eq!(
            covering_prefixes(["TOKEN_", "graygate:list:", "TOKEN_X", "graygate:"]),
            Some(vec!["TOKEN_".to_owned(), "graygate:".to_owned()])
        );
        assert_eq!(covering_prefixes(["a", "", "b"]), None);
        assert_eq!(
            covering_prefixes(["b", "a"]),
            Some(vec!["b".to_owned(), "a".to_owned()])
        );
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("TOKEN_"), "TOKEN_");
    }

    #[test]
    fn layout_of_keys_and_channels() {
        let k = keys(&[("tokens", "TOKEN_"), ("range", "")]);
        assert_eq!(k.policy, "graygate:policy");
        assert_eq!(k.history, "graygate:history");
        assert_eq!(k.channel, "graygate:changes");
        assert_eq!(k.keyspace_prefix, "__keyspace@2__:");
        assert_eq!(k.entry("tokens", "abc"), "TOKEN_abc");
        assert_eq!(k.entry("ips", "10.0.0.1"), "graygate:list:ips:10.0.0.1");
        assert_eq!(k.list_prefix("tokens"), "TOKEN_");
        assert_eq!(k.list_prefix("ips"), "graygate:list:ips:");
        // A list with prefix "" covers every key: watch everything.
        assert_eq!(k.watched_prefixes(), None);
        assert_eq!(k.keyspace_patterns(), ["__keyspace@2__:*"]);

        let k = keys(&[("tokens", "TOKEN_*")]);
        let mut patterns = k.keyspace_patterns();
        patterns.sort();
        assert_eq!(
            patterns,
            [
                "__keyspace@2__:TOKEN_\\**",
                "__keyspace@2__:graygate:list:*"
            ]
        );
    }

    #[test]
    fn records_and_leases_have_their_own_names() {
        let k = keys(&[("tokens", "TOKEN_"), ("ips", "10.")]);
        assert_eq!(k.record("rollout/web"), "graygate:record:rollout/web");
        assert_eq!(k.lease("rollout-driver"), "graygate:lease:rollout-driver");
        // Whatever the key, a record or a lease is never one of the store's other keys, and never
        // a list's entry, except for a list whose prefix covers every key (see the layout).
        for name in ["", "policy", "history", "changes", "list:ips:a", "x"] {
            for key in [k.record(name), k.lease(name)] {
                assert_ne!(key, k.policy);
                assert_ne!(key, k.history);
                assert_ne!(key, k.channel);
                assert!(!key.starts_with(&k.default_list_prefix), "{key}");
                assert!(k.owners(&key).is_empty(), "{key}");
            }
        }
        assert!(!k.record("a").starts_with(&k.leases));
        assert!(!k.lease("a").starts_with(&k.records));

        // Even a list that reads every key as it is (the OpenResty layout) holds none of
        // graygate's own keys, while it still holds every other key.
        let k = keys(&[("redis", "")]);
        for own in [k.record("counters/a"), k.lease("driver"), k.policy.clone()] {
            assert!(k.is_own(&own), "{own}");
            assert!(k.owners(&own).is_empty(), "{own}");
        }
        assert_eq!(
            k.owners("graygate:recorder"),
            [("redis".to_owned(), "graygate:recorder".to_owned())]
        );
        assert_eq!(
            k.owners("TOKEN_abc"),
            [("redis".to_owned(), "TOKEN_abc".to_owned())]
        );
    }

    #[test]
    fn a_key_belongs_to_every_list_whose_prefix_it_has() {
        let k = keys(&[("tokens", "TOKEN_"), ("all", "")]);
        let mut owners = k.owners("TOKEN_abc");
        owners.sort();
        assert_eq!(
            owners,
            [
                ("all".to_owned(), "TOKEN_abc".to_owned()),
                ("tokens".to_owned(), "abc".to_owned())
            ]
        );
        let k = keys(&[("tokens", "TOKEN_")]);
        assert_eq!(
            k.owners("graygate:list:ips:10.0.0.1"),
            [("ips".to_owned(), "10.0.0.1".to_owned())]
        );
        // A configured list is not also read under the default prefix.
        assert!(k.owners("graygate:list:tokens:abc").is_empty());
        assert!(k.owners("other").is_empty());
    }

    use crate::mutate::{bounded, mutated};
    use proptest::prelude::*;

    /// A key as a keyspace notification names it: one of a list's, one of graygate's own, taken
    /// apart, or random text.
    fn redis_key() -> impl Strategy<Value = String> {
        let valid = vec![
            "TOKEN_abc",
            "graygate:list:ips:10.0.0.1",
            "graygate:list:tokens:abc",
            "graygate:record:rollout:web",
            "graygate:policy",
            "Grayscale_Range",
        ];
        prop_oneof![
            3 => prop::sample::select(valid).prop_flat_map(|k| mutated(k.as_bytes().to_vec())),
            1 => prop::collection::vec(any::<u8>(), 0..40),
        ]
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    proptest! {
        #![proptest_config(bounded(256, 5_000))]

        #[test]
        fn every_owner_of_a_key_names_that_key_back(key in redis_key()) {
            let k = keys(&[("tokens", "TOKEN_"), ("all", ""), ("range", "Grayscale_")]);
            let owners = k.owners(&key);
            if k.is_own(&key) {
                prop_assert!(owners.is_empty(), "{:?}: {:?}", key, owners);
            }
            for (list, entry) in &owners {
                prop_assert_eq!(&k.entry(list, entry), &key, "{} {}", list, entry);
            }
        }

        #[test]
        fn an_entry_written_is_owned_by_its_list(
            list in "[a-z_]{1,8}",
            entry in "\\PC{0,20}",
        ) {
            let k = keys(&[("tokens", "TOKEN_")]);
            let key = k.entry(&list, &entry);
            if !k.is_own(&key) {
                prop_assert!(k.owners(&key).contains(&(list.clone(), entry.clone())), "{:?}", key);
            }
        }
    }

    #[test]
    fn notices_read_back() {
        let n: Notice = serde_json::from_str(&Notice::list("a\"b")).unwrap();
        assert_eq!((n.revision, n.list.as_deref()), (None, Some("a\"b")));
        let n: Notice = serde_json::from_str(r#"{"revision":7}"#).unwrap();
        assert_eq!((n.revision, n.list), (Some(7), None));
    }
}
