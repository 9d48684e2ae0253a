//! A list held in memory in a compact form: the embedded store's mirror of each list.
//!
//! The embedded store answers every lookup from memory ([`super::EmbeddedStore`]), so a list of a
//! million identities must be cheap to hold, and a lookup must stay a hash probe with no
//! allocation. A plain `HashMap<String, (Arc<str>, Option<SystemTime>)>` costs about 120 bytes an
//! entry (a 24-byte `String` and its heap block, a 16-byte `Arc`, a 16-byte expiry that most
//! entries lack, and the table's spare capacity). [`CompactList`] holds the same entries in about
//! 18 bytes each for IP keys:
//!
//! - **keys** are stored by kind. An IPv4 address in canonical dotted form (`10.0.0.7`) is packed
//!   into a `u32`, an IPv6 address in the form Rust prints it (`2001:db8::1`) into a `u128`; any
//!   other key is a `Box<str>` (no spare capacity). Only a key that prints back to exactly the same
//!   text is packed: `010.0.0.7`, `10.0.0.7 ` or `2001:DB8::1` are other keys than `10.0.0.7` and
//!   `2001:db8::1`, and stay text, so that two keys are the same entry exactly when their texts
//!   are equal, as in a map keyed by strings;
//! - **values** are interned: a gray list holds `1` or `0` for millions of keys, so an entry keeps
//!   a 4-byte index into the list's value table, where each distinct value is one shared
//!   `Arc<str>` counted by its uses and dropped with its last entry;
//! - **expiry** is kept in a side table for the entries that have one; a bit of the value index
//!   says whether to look there, so an entry without expiry costs nothing for it and its lookup
//!   probes one table.
//!
//! Expired entries stay until removed ([`CompactList::retain_live`]), as the store's disk does;
//! the reads that take a time ([`CompactList::get`], [`CompactList::live_count`]) skip them.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

/// Set in a stored value index when the entry has an expiry in its table's side map.
const EXPIRES: u32 = 1 << 31;

/// One list's entries: key -> (value, optional expiry). See the module documentation.
#[derive(Debug, Default)]
pub struct CompactList {
    /// Keys that are IPv4 addresses in canonical form.
    v4: Keyed<u32>,
    /// Keys that are IPv6 addresses in canonical form.
    v6: Keyed<u128>,
    /// Every other key, as it was given.
    text: Keyed<Box<str>>,
    /// The distinct values the entries point into.
    values: Values,
}

/// A key sorted into the table that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packed<'a> {
    V4(u32),
    V6(u128),
    Text(&'a str),
}

impl Packed<'_> {
    /// The table a key goes in: packed when it prints back as the same text, else as text.
    fn of(key: &str) -> Packed<'_> {
        if let Some(ip) = pack_v4(key) {
            Packed::V4(ip)
        } else if let Some(ip) = pack_v6(key) {
            Packed::V6(ip)
        } else {
            Packed::Text(key)
        }
    }
}

impl CompactList {
    /// An empty list.
    pub fn new() -> CompactList {
        CompactList::default()
    }

    /// The value of `key` if it is present and not expired now. Reads the clock only for an entry
    /// that has an expiry; allocates nothing (the value is shared).
    pub fn get(&self, key: &str) -> Option<Arc<str>> {
        self.get_live(key, SystemTime::now)
    }

    /// The value of `key` if it is present and not expired at `now`.
    pub fn get_at(&self, key: &str, now: SystemTime) -> Option<Arc<str>> {
        self.get_live(key, || now)
    }

    fn get_live(&self, key: &str, now: impl FnOnce() -> SystemTime) -> Option<Arc<str>> {
        let (id, at) = self.entry_of(Packed::of(key))?;
        match at {
            Some(at) if at <= now() => None,
            _ => Some(self.values.get(id)),
        }
    }

    /// The value and expiry of `key`, expired or not.
    pub fn entry(&self, key: &str) -> Option<(Arc<str>, Option<SystemTime>)> {
        let (id, at) = self.entry_of(Packed::of(key))?;
        Some((self.values.get(id), at))
    }

    fn entry_of(&self, key: Packed<'_>) -> Option<(u32, Option<SystemTime>)> {
        match key {
            Packed::V4(ip) => self.v4.get(&ip),
            Packed::V6(ip) => self.v6.get(&ip),
            Packed::Text(text) => self.text.get(text),
        }
    }

    /// Sets `key` to `value`, expiring at `expires_at` (`None`: never), replacing what it had.
    pub fn insert(&mut self, key: &str, value: &str, expires_at: Option<SystemTime>) {
        let id = self.values.intern(value);
        let old = match Packed::of(key) {
            Packed::V4(ip) => self.v4.insert(ip, id, expires_at),
            Packed::V6(ip) => self.v6.insert(ip, id, expires_at),
            Packed::Text(text) => self.text.insert(Box::from(text), id, expires_at),
        };
        if let Some(old) = old {
            self.values.release(old);
        }
    }

    /// Removes `key`; whether it was there (expired or not).
    pub fn remove(&mut self, key: &str) -> bool {
        let old = match Packed::of(key) {
            Packed::V4(ip) => self.v4.remove(&ip),
            Packed::V6(ip) => self.v6.remove(&ip),
            Packed::Text(text) => self.text.remove(text),
        };
        old.map(|id| self.values.release(id)).is_some()
    }

    /// How many entries the list holds, expired ones included.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.text.len()
    }

    /// Whether the list holds no entry at all, expired ones included.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries are not expired at `now`. Counts through the expiry tables only.
    pub fn live_count(&self, now: SystemTime) -> usize {
        self.len()
            - (self.v4.expired_count(now)
                + self.v6.expired_count(now)
                + self.text.expired_count(now))
    }

    /// Removes the entries expired at `now`; returns how many there were.
    pub fn retain_live(&mut self, now: SystemTime) -> usize {
        let mut removed = self.v4.remove_expired(now);
        removed.extend(self.v6.remove_expired(now));
        removed.extend(self.text.remove_expired(now));
        for &id in &removed {
            self.values.release(id);
        }
        removed.len()
    }

    /// The keys of the entries expired at `now`, in no particular order. Looks at the entries
    /// that have an expiry only.
    pub fn expired_keys(&self, now: SystemTime) -> Vec<String> {
        let v4 = self
            .v4
            .expired(now)
            .map(|ip| Ipv4Addr::from(*ip).to_string());
        let v6 = self
            .v6
            .expired(now)
            .map(|ip| Ipv6Addr::from(*ip).to_string());
        let text = self.text.expired(now).map(|text| String::from(&**text));
        v4.chain(v6).chain(text).collect()
    }

    /// Every entry, expired ones included, in no particular order: key (as given), value and
    /// expiry.
    pub fn iter(&self) -> impl Iterator<Item = (String, Arc<str>, Option<SystemTime>)> + '_ {
        let v4 = self
            .v4
            .iter()
            .map(|(ip, id, at)| (Ipv4Addr::from(*ip).to_string(), id, at));
        let v6 = self
            .v6
            .iter()
            .map(|(ip, id, at)| (Ipv6Addr::from(*ip).to_string(), id, at));
        let text = self
            .text
            .iter()
            .map(|(text, id, at)| (String::from(&**text), id, at));
        v4.chain(v6)
            .chain(text)
            .map(|(key, id, at)| (key, self.values.get(id), at))
    }

    /// How many distinct values the entries use (for tests of the value table's upkeep).
    #[cfg(test)]
    fn distinct_values(&self) -> usize {
        self.values.ids.len()
    }
}

/// One table of keys of one kind: key -> value index, and the side map of expiries.
#[derive(Debug)]
struct Keyed<K> {
    /// Key -> index into [`Values`], with [`EXPIRES`] set when `expiry` holds the key.
    ids: HashMap<K, u32>,
    /// Expiry of the entries that have one.
    expiry: HashMap<K, SystemTime>,
}

impl<K> Default for Keyed<K> {
    fn default() -> Self {
        Keyed {
            ids: HashMap::new(),
            expiry: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn get<Q>(&self, key: &Q) -> Option<(u32, Option<SystemTime>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = *self.ids.get(key)?;
        if id & EXPIRES == 0 {
            return Some((id, None));
        }
        Some((id & !EXPIRES, self.expiry.get(key).copied()))
    }

    /// Sets `key`; returns the value index it had.
    fn insert(&mut self, key: K, id: u32, expires_at: Option<SystemTime>) -> Option<u32> {
        let stored = match expires_at {
            Some(at) => {
                self.expiry.insert(key.clone(), at);
                id | EXPIRES
            }
            None => {
                // An expiry the key had before no longer holds.
                if !self.expiry.is_empty() {
                    self.expiry.remove(&key);
                }
                id
            }
        };
        self.ids.insert(key, stored).map(|old| old & !EXPIRES)
    }

    /// Removes `key`; returns the value index it had.
    fn remove<Q>(&mut self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let old = self.ids.remove(key)?;
        if old & EXPIRES != 0 {
            self.expiry.remove(key);
        }
        Some(old & !EXPIRES)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn expired_count(&self, now: SystemTime) -> usize {
        self.expiry.values().filter(|&&at| at <= now).count()
    }

    /// The keys expired at `now`.
    fn expired(&self, now: SystemTime) -> impl Iterator<Item = &K> + '_ {
        self.expiry
            .iter()
            .filter(move |&(_, &at)| at <= now)
            .map(|(key, _)| key)
    }

    /// Removes the entries expired at `now`; returns their value indexes.
    fn remove_expired(&mut self, now: SystemTime) -> Vec<u32> {
        let mut removed = Vec::new();
        let ids = &mut self.ids;
        self.expiry.retain(|key, at| {
            let keep = *at > now;
            if !keep {
                if let Some(id) = ids.remove(key) {
                    removed.push(id & !EXPIRES);
                }
            }
            keep
        });
        removed
    }

    fn iter(&self) -> impl Iterator<Item = (&K, u32, Option<SystemTime>)> + '_ {
        self.ids.iter().map(|(key, &id)| {
            if id & EXPIRES == 0 {
                (key, id, None)
            } else {
                (key, id & !EXPIRES, self.expiry.get(key).copied())
            }
        })
    }
}

/// The distinct values of a list, each stored once and counted by the entries that use it.
#[derive(Debug, Default)]
struct Values {
    /// Value index -> the value and how many entries use it; `None` for a free slot.
    slots: Vec<Option<(Arc<str>, usize)>>,
    /// Free slots, reused before the table grows.
    free: Vec<u32>,
    /// Value -> its index, to intern.
    ids: HashMap<Arc<str>, u32>,
}

impl Values {
    /// The index of `value`, counting one more use of it.
    fn intern(&mut self, value: &str) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            if let Some((_, uses)) = &mut self.slots[id as usize] {
                *uses += 1;
            }
            return id;
        }
        let value: Arc<str> = Arc::from(value);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some((Arc::clone(&value), 1));
                id
            }
            None => {
                let id = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|id| id & EXPIRES == 0)
                    .expect("a list has fewer than 2^31 distinct values");
                self.slots.push(Some((Arc::clone(&value), 1)));
                id
            }
        };
        self.ids.insert(value, id);
        id
    }

    /// The value at `id`, which an entry uses.
    fn get(&self, id: u32) -> Arc<str> {
        match &self.slots[id as usize] {
            Some((value, _)) => Arc::clone(value),
            None => unreachable!("value index {id} is used by an entry but free"),
        }
    }

    /// Counts one use of `id` fewer; the value goes with its last use.
    fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        let Some((value, uses)) = slot else {
            unreachable!("value index {id} released but free");
        };
        *uses -= 1;
        if *uses == 0 {
            self.ids.remove(&**value);
            *slot = None;
            self.free.push(id);
        }
    }
}

/// `key` as a `u32` if it is an IPv4 address exactly as [`Ipv4Addr`] prints it: four decimal
/// numbers up to 255 without leading zeros, joined by dots, and nothing else.
fn pack_v4(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    if bytes.len() < 7 || bytes.len() > 15 {
        return None;
    }
    let mut ip = 0u32;
    let mut parts = 0;
    for part in bytes.split(|&b| b == b'.') {
        parts += 1;
        if parts > 4 || part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut octet = 0u32;
        for &digit in part {
            if !digit.is_ascii_digit() {
                return None;
            }
            octet = octet * 10 + u32::from(digit - b'0');
        }
        if octet > 255 {
            return None;
        }
        ip = (ip << 8) | octet;
    }
    (parts == 4).then_some(ip)
}

/// `key` as a `u128` if it is an IPv6 address exactly as [`Ipv6Addr`] prints it (lower case,
/// the longest run of zero groups shortened to `::`, `::ffff:a.b.c.d` for a mapped IPv4 address).
fn pack_v6(key: &str) -> Option<u128> {
    // Longest printed form: eight groups of four hex digits and seven colons.
    const LONGEST: usize = 39;
    if key.len() > LONGEST || !key.contains(':') {
        return None;
    }
    let ip: Ipv6Addr = key.parse().ok()?;
    let mut printed = StackText::<LONGEST>::default();
    write!(printed, "{ip}").ok()?;
    (printed.as_str() == key).then(|| u128::from(ip))
}

/// A fixed buffer to print an address into, so that checking a key allocates nothing.
struct StackText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for StackText<N> {
    fn default() -> Self {
        StackText {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> StackText<N> {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever written in.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dest = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn sorted(list: &CompactList) -> Vec<(String, String, Option<SystemTime>)> {
        let mut out: Vec<_> = list
            .iter()
            .map(|(key, value, at)| (key, value.to_string(), at))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn only_canonical_ipv4_is_packed() {
        assert_eq!(pack_v4("10.0.0.7"), Some(0x0a00_0007));
        assert_eq!(pack_v4("0.0.0.0"), Some(0));
        assert_eq!(pack_v4("255.255.255.255"), Some(u32::MAX));
        for other in [
            "010.0.0.7",
            "10.0.0.07",
            "10.0.0.7 ",
            " 10.0.0.7",
            "10.0.0",
            "10.0.0.7.1",
            "10..0.7",
            "10.0.0.256",
            "10.0.0.+7",
            "1e1.0.0.7",
            "::ffff:10.0.0.7",
            "",
        ] {
            assert_eq!(pack_v4(other), None, "{other:?}");
        }
    }

    #[test]
    fn only_ipv6_as_printed_is_packed() {
        assert_eq!(pack_v6("::1"), Some(1));
        assert_eq!(pack_v6("2001:db8::7"), Some((0x2001_0db8 << 96) | 7));
        assert_eq!(pack_v6("::ffff:10.0.0.7"), Some(0xffff_0a00_0007));
        for other in [
            "2001:DB8::7",
            "2001:0db8::7",
            "0::1",
            "0:0:0:0:0:0:0:1",
            "::ffff:a00:7",
            "::1 ",
            "[::1]",
            "10.0.0.7",
            "1:2:3:4:5:6:7:8:9",
        ] {
            assert_eq!(pack_v6(other), None, "{other:?}");
        }
    }

    #[test]
    fn keys_of_every_kind_are_distinct_by_their_text() {
        let mut list = CompactList::new();
        let keys = [
            "10.0.0.7",
            "010.0.0.7",
            "10.0.0.7 ",
            "::ffff:10.0.0.7",
            "::FFFF:10.0.0.7",
            "2001:db8::7",
            "2001:DB8::7",
            "token-abc",
        ];
        for (i, key) in keys.iter().enumerate() {
            list.insert(key, &i.to_string(), None);
        }
        assert_eq!(list.len(), keys.len());
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(list.get(key).as_deref(), Some(&*i.to_string()), "{key:?}");
        }
        let mut listed: Vec<String> = list.iter().map(|(key, _, _)| key).collect();
        listed.sort();
        let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        want.sort();
        assert_eq!(listed, want);
        assert!(list.remove("010.0.0.7"));
        assert_eq!(list.get("10.0.0.7").as_deref(), Some("0"));
        assert!(!list.remove("010.0.0.7"));
    }

    #[test]
    fn values_are_shared_and_dropped_with_their_last_entry() {
        let mut list = CompactList::new();
        for i in 0..1000u32 {
            let key = Ipv4Addr::from(i).to_string();
            list.insert(&key, if i % 2 == 0 { "1" } else { "0" }, None);
        }
        assert_eq!(list.distinct_values(), 2);
        let a = list.get("0.0.0.0").unwrap();
        let b = list.get("0.0.0.2").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one allocation per distinct value");

        list.insert("user", "unique", None);
        assert_eq!(list.distinct_values(), 3);
        list.insert("user", "1", None);
        assert_eq!(list.distinct_values(), 2, "`unique` went with its last use");
        list.insert("other", "new", None);
        assert_eq!(list.values.slots.len(), 3, "the freed slot was reused");
        assert_eq!(list.get("other").as_deref(), Some("new"));
    }

    #[test]
    fn expiry_is_kept_only_for_entries_that_have_one() {
        let mut list = CompactList::new();
        list.insert("10.0.0.1", "1", None);
        list.insert("10.0.0.2", "1", Some(t(10)));
        list.insert("k", "v", Some(t(20)));
        assert_eq!(list.v4.expiry.len(), 1);
        assert_eq!(list.text.expiry.len(), 1);

        assert_eq!(list.get_at("10.0.0.2", t(9)).as_deref(), Some("1"));
        // An entry ends at its expiry, as `live` has it in the store.
        assert_eq!(list.get_at("10.0.0.2", t(10)), None);
        assert_eq!(list.entry("10.0.0.2"), Some((Arc::from("1"), Some(t(10)))));
        assert_eq!(list.live_count(t(0)), 3);
        assert_eq!(list.live_count(t(15)), 2);
        assert_eq!(list.live_count(t(25)), 1);

        // A new value without expiry drops the old expiry.
        list.insert("10.0.0.2", "1", None);
        assert!(list.v4.expiry.is_empty());
        assert_eq!(list.get_at("10.0.0.2", t(100)).as_deref(), Some("1"));

        assert_eq!(list.retain_live(t(25)), 1);
        assert_eq!(list.len(), 2);
        assert!(list.text.expiry.is_empty());
        assert_eq!(list.distinct_values(), 1);
    }

    /// One step against both the list and its model.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, String, Option<u64>),
        Remove(String),
        RetainLive(u64),
    }

    /// Keys that collide on purpose: canonical addresses, their near misses, and plain text.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4, 0u8..3).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
            (0u8..4).prop_map(|a| format!("010.0.0.{a}")),
            (0u8..4).prop_map(|a| format!("10.0.0.{a} ")),
            (0u16..4).prop_map(|a| format!("2001:db8::{a:x}")),
            (0u16..4).prop_map(|a| format!("2001:DB8::{a:X}")),
            (0u16..4).prop_map(|a| format!("::ffff:10.0.0.{a}")),
            "[a-c0-9.:]{0,6}",
            any::<u32>().prop_map(|ip| Ipv4Addr::from(ip).to_string()),
            any::<u128>().prop_map(|ip| Ipv6Addr::from(ip).to_string()),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (key(), prop_oneof!["[01]", "[a-z]{0,3}"], proptest::option::of(0u64..30))
                .prop_map(|(k, v, at)| Op::Insert(k, v, at)),
            2 => key().prop_map(Op::Remove),
            1 => (0u64..30).prop_map(Op::RetainLive),
        ]
    }

    proptest! {
        /// The packed form is used exactly when it prints back as the same text.
        #[test]
        fn ipv4_packing_matches_the_round_trip(
            text in "[0-9.]{0,16}|[0-9 .a]{0,16}|(0?[0-9]{1,3}\\.){3}0?[0-9]{1,3} ?",
        ) {
            let round_trip = text
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|ip| ip.to_string() == text)
                .map(u32::from);
            prop_assert_eq!(pack_v4(&text), round_trip);
        }

        #[test]
        fn ipv6_packing_round_trips(ip in any::<u128>(), text in "[0-9a-fA-F:.]{0,20}") {
            let printed = Ipv6Addr::from(ip).to_string();
            prop_assert_eq!(pack_v6(&printed), Some(ip));
            if let Some(packed) = pack_v6(&text) {
                prop_assert_eq!(Ipv6Addr::from(packed).to_string(), text);
            }
        }

        /// The list behaves as a plain map of strings to (value, expiry).
        #[test]
        fn behaves_as_a_map_of_strings(ops in proptest::collection::vec(op(), 1..60)) {
            let mut list = CompactList::new();
            let mut model: HashMap<String, (String, Option<SystemTime>)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(key, value, at) => {
                        let at = at.map(t);
                        list.insert(&key, &value, at);
                        model.insert(key, (value, at));
                    }
                    Op::Remove(key) => {
                        prop_assert_eq!(list.remove(&key), model.remove(&key).is_some());
                    }
                    Op::RetainLive(now) => {
                        let before = model.len();
                        model.retain(|_, (_, at)| at.is_none_or(|at| at > t(now)));
                        prop_assert_eq!(list.retain_live(t(now)), before - model.len());
                    }
                }
                prop_assert_eq!(list.len(), model.len());
                prop_assert_eq!(list.is_empty(), model.is_empty());
                for now in [0, 10, 29] {
                    let live = model.values().filter(|(_, at)| at.is_none_or(|at| at > t(now)));
                    prop_assert_eq!(list.live_count(t(now)), live.count());
                    let mut expired: Vec<&String> = model
                        .iter()
                        .filter(|(_, (_, at))| at.is_some_and(|at| at <= t(now)))
                        .map(|(key, _)| key)
                        .collect();
                    expired.sort();
                    let mut listed = list.expired_keys(t(now));
                    listed.sort();
                    prop_assert_eq!(listed.iter().collect::<Vec<_>>(), expired);
                }
                for (key, (value, at)) in &model {
                    prop_assert_eq!(list.entry(key), Some((Arc::from(value.as_str()), *at)));
                    let live = at.is_none_or(|at| at > t(10));
                    prop_assert_eq!(list.get_at(key, t(10)).is_some(), live);
                }
                let mut want: Vec<_> = model
                    .iter()
                    .map(|(k, (v, at))| (k.clone(), v.clone(), *at))
                    .collect();
                want.sort();
                prop_assert_eq!(sorted(&list), want);
                let distinct: std::collections::HashSet<&str> =
                    model.values().map(|(v, _)| v.as_str()).collect();
                prop_assert_eq!(list.distinct_values(), distinct.len());
            }
            for key in ["10.0.0.1", "nobody", "::1"] {
                if !model.contains_key(key) {
                    prop_assert_eq!(list.get_at(key, t(0)), None);
                }
            }
        }
    }
}
