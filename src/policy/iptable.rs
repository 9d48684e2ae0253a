//! A set of IP networks with a lookup whose cost does not grow with the number of networks.
//!
//! Networks are grouped by prefix length; each group is a hash set of masked addresses. A lookup
//! masks the address once per distinct prefix length present (at most 33 for IPv4, 129 for IPv6,
//! in practice a handful), so one million single addresses cost one hash probe.
//!
//! [`IpRankTable`] is the same structure with a number (a rule index) per network: a lookup
//! answers the lowest number among the networks that contain the address, which is how the rule
//! index finds the first `cidr` rule a client IP matches.

use super::hash::FastState;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// Networks of one family grouped by prefix length, longest prefix first, each network carrying a
/// value.
#[derive(Debug, Clone)]
struct Groups<K, V> {
    groups: Vec<(u8, HashMap<K, V, FastState>)>,
}

impl<K, V> Default for Groups<K, V> {
    fn default() -> Self {
        Self { groups: Vec::new() }
    }
}

impl<K: std::hash::Hash + Eq + Copy, V> Groups<K, V> {
    /// The value slot of `bits/prefix`, created with `new` when the network is not in the table
    /// yet (and then `true` is returned with it).
    fn entry(&mut self, prefix: u8, bits: K, new: impl FnOnce() -> V) -> (&mut V, bool) {
        let at = match self.groups.iter().position(|(l, _)| *l <= prefix) {
            Some(i) if self.groups[i].0 == prefix => i,
            Some(i) => {
                self.groups.insert(i, (prefix, HashMap::default()));
                i
            }
            None => {
                self.groups.push((prefix, HashMap::default()));
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[at].1;
        let fresh = !group.contains_key(&bits);
        (group.entry(bits).or_insert_with(new), fresh)
    }
}

impl<V> Groups<u32, V> {
    #[inline]
    fn matches(&self, bits: u32) -> impl Iterator<Item = &V> + '_ {
        self.groups
            .iter()
            .filter_map(move |(len, set)| set.get(&(bits & mask32(*len))))
    }
}

impl<V> Groups<u128, V> {
    #[inline]
    fn matches(&self, bits: u128) -> impl Iterator<Item = &V> + '_ {
        self.groups
            .iter()
            .filter_map(move |(len, set)| set.get(&(bits & mask128(*len))))
    }
}

/// A set of IPv4 and IPv6 networks.
#[derive(Debug, Clone, Default)]
pub struct IpTable {
    v4: Groups<u32, ()>,
    v6: Groups<u128, ()>,
    len: usize,
}

impl IpTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a network (`10.0.0.0/8`) or a single address.
    pub fn insert(&mut self, net: IpNet) {
        let fresh = match net.trunc() {
            IpNet::V4(n) => {
                self.v4
                    .entry(n.prefix_len(), u32::from(n.network()), || ())
                    .1
            }
            IpNet::V6(n) => {
                self.v6
                    .entry(n.prefix_len(), u128::from(n.network()), || ())
                    .1
            }
        };
        self.len += usize::from(fresh);
    }

    /// Parses `10.0.0.0/8`, `1.2.3.4` or `::1` into a network.
    pub fn parse_net(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(net);
        }
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("`{text}` is neither an IP address nor a network like 10.0.0.0/8"))
    }

    /// Whether `ip` lies in any network of the table. IPv4-mapped IPv6 addresses are looked up as
    /// IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match family_bits(ip) {
            Bits::V4(bits) => self.v4.matches(bits).next().is_some(),
            Bits::V6(bits) => self.v6.matches(bits).next().is_some(),
        }
    }

    /// How many distinct networks the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromIterator<IpNet> for IpTable {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        let mut table = IpTable::new();
        for net in iter {
            table.insert(net);
        }
        table
    }
}

/// IP networks, each with a rank; a lookup answers the lowest rank among the networks that
/// contain the address. Same grouping and cost as [`IpTable`].
#[derive(Debug, Clone, Default)]
pub(super) struct IpRankTable {
    v4: Groups<u32, u32>,
    v6: Groups<u128, u32>,
}

impl IpRankTable {
    /// Adds every network of `table` with the same rank.
    pub fn insert_table(&mut self, table: &IpTable, rank: u32) {
        // A network already present keeps the lower of its two ranks.
        for (prefix, group) in &table.v4.groups {
            for bits in group.keys() {
                let slot = self.v4.entry(*prefix, *bits, || rank).0;
                *slot = (*slot).min(rank);
            }
        }
        for (prefix, group) in &table.v6.groups {
            for bits in group.keys() {
                let slot = self.v6.entry(*prefix, *bits, || rank).0;
                *slot = (*slot).min(rank);
            }
        }
    }

    /// The lowest rank of a network containing `ip` (IPv4-mapped IPv6 looked up as IPv4).
    #[inline]
    pub fn lowest(&self, ip: IpAddr) -> Option<u32> {
        match family_bits(ip) {
            Bits::V4(bits) => self.v4.matches(bits).copied().min(),
            Bits::V6(bits) => self.v6.matches(bits).copied().min(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.groups.is_empty() && self.v6.groups.is_empty()
    }
}

enum Bits {
    V4(u32),
    V6(u128),
}

#[inline]
fn family_bits(ip: IpAddr) -> Bits {
    match ip {
        IpAddr::V4(v4) => Bits::V4(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Bits::V4(u32::from(v4)),
            None => Bits::V6(u128::from(v6)),
        },
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(nets: &[&str]) -> IpTable {
        nets.iter()
            .map(|n| IpTable::parse_net(n).unwrap())
            .collect()
    }

    #[test]
    fn matches_networks_and_single_addresses() {
        let t = table(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]);
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("2001:db8:1::5".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(!t.contains("::2".parse().unwrap()));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn mapped_v6_is_looked_up_as_v4() {
        let t = table(&["10.0.0.7"]);
        assert!(t.contains("::ffff:10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_ignored_and_zero_prefix_matches_all() {
        let t = table(&["10.1.2.3/8"]);
        assert!(t.contains("10.9.9.9".parse().unwrap()));
        let all = table(&["0.0.0.0/0"]);
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::5".parse().unwrap()));
    }

    #[test]
    fn rank_table_answers_the_lowest_matching_rank() {
        let mut t = IpRankTable::default();
        assert!(t.is_empty() && t.lowest("10.0.0.1".parse().unwrap()).is_none());
        let insert = |t: &mut IpRankTable, net: &str, rank| t.insert_table(&table(&[net]), rank);
        insert(&mut t, "10.0.0.0/8", 7);
        insert(&mut t, "10.1.0.0/16", 3);
        insert(&mut t, "10.1.2.3", 5);
        insert(&mut t, "10.1.2.3/32", 9);
        insert(&mut t, "2001:db8::/32", 4);
        insert(&mut t, "::/0", 11);
        let at = |t: &IpRankTable, ip: &str| t.lowest(ip.parse().unwrap());
        assert_eq!(at(&t, "10.200.0.1"), Some(7));
        assert_eq!(at(&t, "10.1.9.9"), Some(3));
        assert_eq!(at(&t, "10.1.2.3"), Some(3));
        assert_eq!(at(&t, "::ffff:10.1.2.3"), Some(3));
        assert_eq!(at(&t, "11.0.0.1"), None);
        assert_eq!(at(&t, "2001:db8::1"), Some(4));
        assert_eq!(at(&t, "2001:db9::1"), Some(11));
        insert(&mut t, "10.1.2.3", 1);
        assert_eq!(at(&t, "10.1.2.3"), Some(1));
    }

    #[test]
    fn bad_network_is_named() {
        let err = IpTable::parse_net("10.0.0/8").unwrap_err();
        assert!(err.contains("10.0.0/8"), "{err}");
    }
}
