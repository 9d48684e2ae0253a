//! A set of IP networks with a lookup whose cost does not grow with the number of networks.
//!
//! Networks are grouped by prefix length; each group is a hash set of masked addresses. A lookup
//! masks the address once per distinct prefix length present (at most 33 for IPv4, 129 for IPv6,
//! in practice a handful), so one million single addresses cost one hash probe.

use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;

/// A set of IPv4 and IPv6 networks.
#[derive(Debug, Clone, Default)]
pub struct IpTable {
    /// (prefix length, masked network addresses), longest prefix first.
    v4: Vec<(u8, HashSet<u32>)>,
    v6: Vec<(u8, HashSet<u128>)>,
    len: usize,
}

impl IpTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a network (`10.0.0.0/8`) or a single address.
    pub fn insert(&mut self, net: IpNet) {
        match net.trunc() {
            IpNet::V4(n) => {
                let bits = u32::from(n.network());
                insert_group(&mut self.v4, n.prefix_len(), bits, &mut self.len);
            }
            IpNet::V6(n) => {
                let bits = u128::from(n.network());
                insert_group(&mut self.v6, n.prefix_len(), bits, &mut self.len);
            }
        }
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
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                self.v4
                    .iter()
                    .any(|(len, set)| set.contains(&(bits & mask32(*len))))
            }
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return self.contains(IpAddr::V4(v4));
                }
                let bits = u128::from(v6);
                self.v6
                    .iter()
                    .any(|(len, set)| set.contains(&(bits & mask128(*len))))
            }
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

fn insert_group<T: std::hash::Hash + Eq>(
    groups: &mut Vec<(u8, HashSet<T>)>,
    prefix: u8,
    bits: T,
    len: &mut usize,
) {
    let at = match groups.iter().position(|(l, _)| *l <= prefix) {
        Some(i) if groups[i].0 == prefix => i,
        Some(i) => {
            groups.insert(i, (prefix, HashSet::new()));
            i
        }
        None => {
            groups.push((prefix, HashSet::new()));
            groups.len() - 1
        }
    };
    if groups[at].1.insert(bits) {
        *len += 1;
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
    fn bad_network_is_named() {
        let err = IpTable::parse_net("10.0.0/8").unwrap_err();
        assert!(err.contains("10.0.0/8"), "{err}");
    }
}
