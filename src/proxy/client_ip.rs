//! Which IP address a request comes from: the peer, or a client behind trusted proxies.
//!
//! Rules pick users by client IP (gray lists, office CIDRs), so this address decides who sees a
//! canary. Headers that carry an address (`X-Forwarded-For`, `X-Real-IP`) are written by whoever
//! opened the connection, so they are believed only when the peer is one of our own proxies
//! (`trusted_proxies`); from anyone else a spoofed header changes nothing.

use std::net::{IpAddr, Ipv6Addr};

use http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// `X-Forwarded-For`: the chain of addresses proxies appended, client first.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Real-IP`: the client address as the proxy in front of us resolved it.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// How the client IP is found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIpConfig {
    /// Peers whose address headers are believed (load balancers, our own nginx). Empty: no
    /// header is ever believed and the client IP is always the peer.
    pub trusted_proxies: Vec<IpNet>,
    /// Which header wins when the peer is trusted.
    pub mode: ClientIpMode,
}

/// Which header names the client when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIpMode {
    /// Walk `X-Forwarded-For` from the right and take the first address that is not a trusted
    /// proxy: the last hop that no proxy of ours can vouch for. A client cannot push itself
    /// past our proxies by sending its own `X-Forwarded-For`. Without `X-Forwarded-For`,
    /// `X-Real-IP`; without either, the peer.
    #[default]
    Forwarded,
    /// The order of the original nginx + lua design, kept for migrations that must decide
    /// exactly as before: `X-Real-IP`, else the leftmost `X-Forwarded-For` entry, else the peer.
    /// Trusts the client's own first `X-Forwarded-For` entry if the proxy in front appends.
    Original,
}

impl ClientIpConfig {
    /// The client IP of a request that arrived from `peer` with `headers`.
    ///
    /// Never fails: junk header values are skipped, and the peer is the answer of last resort.
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) come back as IPv4, so that rules written
    /// with IPv4 addresses match clients of a dual-stack listener.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = normalize(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        match self.mode {
            ClientIpMode::Forwarded => {
                let mut saw_xff = false;
                let mut leftmost = None;
                // Walk right to left across every header line (later lines were appended later).
                for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
                    let Ok(line) = line.to_str() else { continue };
                    for entry in line.rsplit(',') {
                        let Some(ip) = parse_ip(entry) else { continue };
                        saw_xff = true;
                        if !self.is_trusted(ip) {
                            return ip;
                        }
                        leftmost = Some(ip);
                    }
                }
                if saw_xff {
                    // Every hop is one of ours: the leftmost is the closest thing to a client.
                    return leftmost.unwrap_or(peer);
                }
                real_ip(headers).unwrap_or(peer)
            }
            ClientIpMode::Original => real_ip(headers)
                .or_else(|| leftmost_forwarded(headers))
                .unwrap_or(peer),
        }
    }

    /// True when `ip` is one of our own proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// `X-Real-IP`, if present and an address.
fn real_ip(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get(X_REAL_IP)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_ip)
}

/// The leftmost `X-Forwarded-For` entry, if it is an address (the original design looked at
/// that one entry only, so a junk first entry means "no answer" here too).
fn leftmost_forwarded(headers: &HeaderMap) -> Option<IpAddr> {
    let first_line = headers.get(X_FORWARDED_FOR)?.to_str().ok()?;
    parse_ip(first_line.split(',').next()?)
}

/// One address as proxies write it: surrounding spaces, IPv6 possibly in brackets, IPv4 possibly
/// with a port (`1.2.3.4:5678`, `[::1]:80`). Anything else (`unknown`, obfuscated ids) is `None`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(normalize(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        let (inside, _) = rest.split_once(']')?;
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| normalize(IpAddr::V6(v6)));
    }
    if let Ok(sock) = s.parse::<std::net::SocketAddr>() {
        return Some(normalize(sock.ip()));
    }
    None
}

/// IPv4-mapped IPv6 -> IPv4; everything else unchanged.
pub(crate) fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg(mode: ClientIpMode, trusted: &[&str]) -> ClientIpConfig {
        ClientIpConfig {
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            mode,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_and_spoofed_headers_are_ignored() {
        for mode in [ClientIpMode::Forwarded, ClientIpMode::Original] {
            let c = cfg(mode, &["10.0.0.0/8"]);
            let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-real-ip", "2.2.2.2")]);
            assert_eq!(
                c.resolve(ip("203.0.113.7"), &h),
                ip("203.0.113.7"),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn no_trusted_proxies_means_the_peer_always() {
        let c = ClientIpConfig::default();
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(c.resolve(ip("10.1.1.1"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn forwarded_takes_the_rightmost_untrusted_hop() {
        let c = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        // The client claimed 6.6.6.6 itself; our proxy 10.0.0.2 appended the real 1.2.3.4.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_concatenates_header_lines_in_order() {
        let c = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.0.0.3,10.0.0.2"),
        ]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_all_trusted_gives_the_leftmost() {
        let c = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn forwarded_skips_junk_entries() {
        let c = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, unknown, , 10.0.0.2")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        let junk = headers(&[("x-forwarded-for", "garbage"), ("x-real-ip", "5.5.5.5")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &junk), ip("5.5.5.5"));
    }

    #[test]
    fn forwarded_without_xff_uses_real_ip_then_peer() {
        let c = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        let h = headers(&[("x-real-ip", "7.7.7.7")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("7.7.7.7"));
        let bad = headers(&[("x-real-ip", "not-an-ip")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &bad), ip("10.0.0.1"));
        assert_eq!(c.resolve(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
    }

    #[test]
    fn original_prefers_real_ip_then_leftmost_xff_then_peer() {
        let c = cfg(ClientIpMode::Original, &["10.0.0.0/8"]);
        let both = headers(&[
            ("x-real-ip", "7.7.7.7"),
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
        ]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &both), ip("7.7.7.7"));
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &xff), ip("1.1.1.1"));
        let junk = headers(&[
            ("x-real-ip", "nope"),
            ("x-forwarded-for", "unknown, 2.2.2.2"),
        ]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &junk), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_addresses_and_ports() {
        let c = cfg(ClientIpMode::Forwarded, &["fd00::/8", "10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "2001:db8::1, [2001:db8::2]:443, fd00::5")]);
        assert_eq!(c.resolve(ip("fd00::1"), &h), ip("2001:db8::2"));
        let v4port = headers(&[("x-forwarded-for", "1.2.3.4:5555")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &v4port), ip("1.2.3.4"));
        let bracketed = headers(&[("x-forwarded-for", "[2001:db8::9]")]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &bracketed), ip("2001:db8::9"));
    }

    #[test]
    fn mapped_ipv4_is_normalized_for_peer_trust_and_headers() {
        let c = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        // An untrusted mapped peer comes back as plain IPv4.
        assert_eq!(
            c.resolve(ip("::ffff:203.0.113.9"), &HeaderMap::new()),
            ip("203.0.113.9")
        );
        // A trusted proxy seen through a dual-stack socket is still trusted.
        let h = headers(&[("x-forwarded-for", "::ffff:1.2.3.4, ::ffff:10.0.0.2")]);
        assert_eq!(c.resolve(ip("::ffff:10.0.0.1"), &h), ip("1.2.3.4"));
    }
}
