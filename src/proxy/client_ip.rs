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

/// How the client IP is found, and what is believed of a peer's forwarding headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIpConfig {
    /// Peers whose address headers are believed (load balancers, our own nginx). Empty: no
    /// header is ever believed and the client IP is always the peer.
    pub trusted_proxies: Vec<IpNet>,
    /// Which header wins when the peer is trusted.
    pub mode: ClientIpMode,
    /// Remove `Forwarded` and the `X-Forwarded-*` headers (but `X-Forwarded-For`, which graygate
    /// appends to) from requests of peers that are not trusted proxies, so that no client can
    /// tell an upstream which host or scheme it was reached by. Default on.
    pub strip_untrusted_forwarded: bool,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        ClientIpConfig {
            trusted_proxies: Vec::new(),
            mode: ClientIpMode::default(),
            strip_untrusted_forwarded: true,
        }
    }
}

/// Which header names the client when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIpMode {
    /// Walk `X-Forwarded-For` from the right and take the first address that is not a trusted
    /// proxy: the last hop that no proxy of ours can vouch for. A client cannot push itself
    /// past our proxies by sending its own `X-Forwarded-For`. Without `X-Forwarded-For`,
    /// `X-Real-IP`; without either, the peer.
    ///
    /// The walk stops at the first entry that is not an address (`unknown`, an obfuscated id,
    /// text that is not UTF-8): the trusted proxy that wrote it did not know its client, and
    /// everything left of it was written by someone no proxy of ours can vouch for. The answer
    /// is then the nearest address that is known: the last trusted hop walked (the proxy that
    /// saw the unknown client), or the peer when the junk is the rightmost entry. Empty list
    /// elements (`a, , b`) are skipped, as RFC 9110 5.6.1 asks of a list.
    #[default]
    Forwarded,
    /// The order of the original nginx + lua design, kept for migrations that must decide
    /// exactly as before: `X-Real-IP`, else the leftmost `X-Forwarded-For` entry, else the peer.
    /// Trusts the client's own first `X-Forwarded-For` entry if the proxy in front appends.
    ///
    /// List lookups by client IP use the header's text itself, as the original passed it to
    /// memcached ([`ClientIpConfig::lookup_key`]): a multi-hop `X-Forwarded-For` is looked up
    /// whole, never as its leftmost address.
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
                // The leftmost trusted hop walked so far: the nearest address we can vouch for.
                let mut last_trusted = None;
                // Walk right to left across every header line (later lines were appended later).
                for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
                    // Entry by entry, as bytes: an entry that is not UTF-8 is junk like any
                    // other, and leaves the entries our proxies appended right of it readable.
                    for entry in line.as_bytes().rsplit(|b| *b == b',') {
                        let entry = std::str::from_utf8(entry).map(str::trim);
                        if entry.is_ok_and(str::is_empty) {
                            continue;
                        }
                        saw_xff = true;
                        let Some(ip) = entry.ok().and_then(parse_ip) else {
                            // Junk: nothing left of it can be believed.
                            return last_trusted.unwrap_or(peer);
                        };
                        if !self.is_trusted(ip) {
                            return ip;
                        }
                        last_trusted = Some(ip);
                    }
                }
                if saw_xff {
                    // Every hop is one of ours: the leftmost is the closest thing to a client.
                    return last_trusted.unwrap_or(peer);
                }
                real_ip(headers).unwrap_or(peer)
            }
            ClientIpMode::Original => real_ip(headers)
                .or_else(|| leftmost_forwarded(headers))
                .unwrap_or(peer),
        }
    }

    /// The key a list lookup by client IP uses instead of the client IP's own text, if any: in
    /// `original` mode, from a trusted peer, the text the original design gave memcached
    /// (`ngx.req.get_headers()["X-Real-IP"]`, else `["X-Forwarded-For"]`) exactly as sent: an
    /// `X-Real-IP` that is not an address, an IPv6 address in capitals, and a multi-hop
    /// `X-Forwarded-For` (`10.0.0.7, 10.0.0.9`, the whole header) are looked up as they are.
    /// Several `X-Forwarded-For` lines gave the original a table instead of a string, whose
    /// lookup never answered `1`: they are the empty key, which no list holds.
    ///
    /// `None` (look up the client IP as [`ClientIpConfig::resolve`] found it) in `forwarded`
    /// mode, from an untrusted peer, without either header, or for a header that is not text.
    pub fn lookup_key<'h>(&self, peer: IpAddr, headers: &'h HeaderMap) -> Option<&'h str> {
        if self.mode != ClientIpMode::Original || !self.is_trusted(peer) {
            return None;
        }
        if let Some(real) = headers.get(X_REAL_IP) {
            return real.to_str().ok();
        }
        let mut lines = headers.get_all(X_FORWARDED_FOR).iter();
        let first = lines.next()?;
        if lines.next().is_some() {
            return Some("");
        }
        first.to_str().ok()
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
    let first_line = headers.get(X_FORWARDED_FOR)?.as_bytes();
    let first = first_line.split(|b| *b == b',').next()?;
    parse_ip(std::str::from_utf8(first).ok()?)
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
            strip_untrusted_forwarded: true,
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
    fn resolves_the_client_ip() {
        const XFF: &str = "x-forwarded-for";
        const REAL: &str = "x-real-ip";
        let none = ClientIpConfig::default();
        let forwarded = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        let original = cfg(ClientIpMode::Original, &["10.0.0.0/8"]);
        let forwarded_v6 = cfg(ClientIpMode::Forwarded, &["fd00::/8", "10.0.0.0/8"]);
        // The config, the peer, the request's headers, the client IP, and what the case shows.
        // (In the rightmost-untrusted case the client claimed 6.6.6.6 itself; our proxy
        // 10.0.0.2 appended the real 1.2.3.4.)
        type Case<'a> = (
            &'a ClientIpConfig,
            &'a str,
            &'a [(&'static str, &'a str)],
            &'a str,
            &'a str,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (&forwarded, "203.0.113.7", &[(XFF, "1.1.1.1"), (REAL, "2.2.2.2")], "203.0.113.7", "forwarded: an untrusted peer is the client, spoofed headers are ignored"),
            (&original, "203.0.113.7", &[(XFF, "1.1.1.1"), (REAL, "2.2.2.2")], "203.0.113.7", "original: an untrusted peer is the client, spoofed headers are ignored"),
            (&none, "10.1.1.1", &[(XFF, "1.1.1.1")], "10.1.1.1", "no trusted proxies means the peer always"),
            (&forwarded, "10.0.0.1", &[(XFF, "6.6.6.6, 1.2.3.4, 10.0.0.2")], "1.2.3.4", "forwarded takes the rightmost untrusted hop"),
            (&forwarded, "10.0.0.1", &[(XFF, "6.6.6.6, 1.2.3.4"), (XFF, "10.0.0.3,10.0.0.2")], "1.2.3.4", "forwarded concatenates header lines in order"),
            (&forwarded, "10.0.0.1", &[(XFF, "10.9.9.9, 10.0.0.2")], "10.9.9.9", "forwarded, all hops trusted: the leftmost"),
            (&forwarded, "10.0.0.1", &[(XFF, "1.2.3.4, unknown, 10.0.0.2")], "10.0.0.2", "forwarded stops at junk: the trusted hop that saw the unknown client"),
            (&forwarded, "10.0.0.1", &[(XFF, "10.0.0.7, unknown")], "10.0.0.1", "forwarded, junk rightmost: the peer, not the client-written entry left of it"),
            (&forwarded, "10.0.0.1", &[(XFF, "6.6.6.6"), (XFF, "unknown"), (XFF, "10.0.0.2")], "10.0.0.2", "forwarded stops at junk across header lines"),
            (&forwarded, "10.0.0.1", &[(XFF, "1.2.3.4, , 10.0.0.2,")], "1.2.3.4", "forwarded skips empty list elements"),
            (&forwarded, "10.0.0.1", &[(XFF, "garbage"), (REAL, "5.5.5.5")], "10.0.0.1", "forwarded, only junk in x-forwarded-for: the peer (x-real-ip only without x-forwarded-for)"),
            (&forwarded, "10.0.0.1", &[(XFF, " , "), (REAL, "5.5.5.5")], "5.5.5.5", "forwarded, an x-forwarded-for of empty elements is none: x-real-ip"),
            (&forwarded, "10.0.0.1", &[(REAL, "7.7.7.7")], "7.7.7.7", "forwarded without x-forwarded-for: x-real-ip"),
            (&forwarded, "10.0.0.1", &[(REAL, "not-an-ip")], "10.0.0.1", "forwarded, x-real-ip not an address: the peer"),
            (&forwarded, "10.0.0.1", &[], "10.0.0.1", "forwarded without headers: the peer"),
            (&original, "10.0.0.1", &[(REAL, "7.7.7.7"), (XFF, "1.1.1.1, 2.2.2.2")], "7.7.7.7", "original prefers x-real-ip"),
            (&original, "10.0.0.1", &[(XFF, "1.1.1.1, 2.2.2.2")], "1.1.1.1", "original, then the leftmost x-forwarded-for"),
            (&original, "10.0.0.1", &[(REAL, "nope"), (XFF, "unknown, 2.2.2.2")], "10.0.0.1", "original, then the peer"),
            (&forwarded_v6, "fd00::1", &[(XFF, "2001:db8::1, [2001:db8::2]:443, fd00::5")], "2001:db8::2", "IPv6 hops, one bracketed with a port"),
            (&forwarded_v6, "10.0.0.1", &[(XFF, "1.2.3.4:5555")], "1.2.3.4", "IPv4 with a port"),
            (&forwarded_v6, "10.0.0.1", &[(XFF, "[2001:db8::9]")], "2001:db8::9", "bracketed IPv6 without a port"),
            (&forwarded, "::ffff:203.0.113.9", &[], "203.0.113.9", "an untrusted mapped peer comes back as plain IPv4"),
            (&forwarded, "::ffff:10.0.0.1", &[(XFF, "::ffff:1.2.3.4, ::ffff:10.0.0.2")], "1.2.3.4", "a trusted proxy seen through a dual-stack socket is still trusted"),
        ];
        for (c, peer, h, want, what) in cases {
            assert_eq!(c.resolve(ip(peer), &headers(h)), ip(want), "{what}");
        }
    }

    #[test]
    fn the_original_mode_looks_lists_up_by_the_header_text() {
        const XFF: &str = "x-forwarded-for";
        const REAL: &str = "x-real-ip";
        let original = cfg(ClientIpMode::Original, &["10.0.0.0/8"]);
        let forwarded = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        // The config, the peer, the headers, the lookup key (`None`: the client IP's text).
        type Case<'a> = (
            &'a ClientIpConfig,
            &'a str,
            &'a [(&'static str, &'a str)],
            Option<&'a str>,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (&original, "10.0.0.1", &[(REAL, "10.0.0.7")], Some("10.0.0.7")),
            (&original, "10.0.0.1", &[(REAL, "2001:DB8::1")], Some("2001:DB8::1")),
            (&original, "10.0.0.1", &[(REAL, "nope"), (XFF, "10.0.0.7")], Some("nope")),
            (&original, "10.0.0.1", &[(XFF, "10.0.0.7, 10.0.0.9")], Some("10.0.0.7, 10.0.0.9")),
            (&original, "10.0.0.1", &[(XFF, "10.0.0.7"), (XFF, "10.0.0.9")], Some("")),
            (&original, "10.0.0.1", &[], None),
            (&original, "203.0.113.7", &[(REAL, "10.0.0.7")], None),
            (&forwarded, "10.0.0.1", &[(XFF, "10.0.0.7, 10.0.0.9")], None),
            (&forwarded, "10.0.0.1", &[(REAL, "10.0.0.7")], None),
        ];
        for (c, peer, h, want) in cases {
            assert_eq!(
                c.lookup_key(ip(peer), &headers(h)),
                *want,
                "{c:?} {peer} {h:?}"
            );
        }
        // The client IP itself (for `cidr` tests, the access log, `X-Real-IP` upstream) is
        // still the leftmost address.
        let h = headers(&[(XFF, "10.0.0.7, 10.0.0.9")]);
        assert_eq!(original.resolve(ip("10.0.0.1"), &h), ip("10.0.0.7"));
    }

    #[test]
    fn an_entry_that_is_not_utf8_leaves_the_entries_right_of_it_readable() {
        // Found by the generated client chains below: one byte that is not UTF-8 in what the
        // client wrote made the whole line junk, and the answer the trusted hop 10.0.0.2 (an
        // office address to a `cidr` rule) rather than the client 1.2.3.4 that it appended.
        let forwarded = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8"]);
        let original = cfg(ClientIpMode::Original, &["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"6.6.6.6 \xff, 1.2.3.4, 10.0.0.2").unwrap();
        h.append(X_FORWARDED_FOR, line);
        assert_eq!(forwarded.resolve(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // The junk entry itself still ends the walk.
        let mut h = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"1.2.3.4, \xff, 10.0.0.2").unwrap();
        h.append(X_FORWARDED_FOR, line);
        assert_eq!(forwarded.resolve(ip("10.0.0.1"), &h), ip("10.0.0.2"));
        // The original order reads the leftmost entry, whatever is right of it.
        let mut h = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"1.2.3.4, \xff").unwrap();
        h.append(X_FORWARDED_FOR, line);
        assert_eq!(original.resolve(ip("10.0.0.1"), &h), ip("1.2.3.4"));
    }

    use crate::mutate::{bounded, mutated};
    use proptest::prelude::*;

    /// `bytes` as a header value a client can send: every byte `HeaderValue` takes (text, tab,
    /// obs-text), the others (CR, LF, NUL, controls) dropped.
    fn value_of(mut bytes: Vec<u8>) -> HeaderValue {
        bytes.retain(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f));
        HeaderValue::from_bytes(&bytes).expect("only bytes a header value takes")
    }

    /// An `X-Forwarded-For` or `X-Real-IP` value: a valid chain taken apart, or random bytes.
    fn address_header() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            3 => mutated(b"203.0.113.7, 10.0.0.2 , [2001:db8::1]:443,::ffff:10.0.0.9, unknown".to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..48),
        ]
        .prop_map(value_of)
    }

    /// Peers: trusted and not, IPv4, IPv6 and IPv4-mapped.
    fn peer() -> impl Strategy<Value = IpAddr> {
        prop::sample::select(vec![
            "10.0.0.1",
            "203.0.113.9",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
            "::ffff:198.51.100.1",
        ])
        .prop_map(ip)
    }

    /// Every address the headers hold, each entry read on its own: what any answer but the
    /// peer must be one of.
    fn written(headers: &HeaderMap) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for name in [X_FORWARDED_FOR, X_REAL_IP] {
            for line in headers.get_all(name) {
                for entry in line.as_bytes().split(|b| *b == b',') {
                    if let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_ip) {
                        out.push(ip);
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(bounded(256, 5_000))]

        #[test]
        fn the_client_ip_is_the_peer_or_an_address_written_in_the_headers(
            peer in peer(),
            forwarded in prop::collection::vec(address_header(), 0..3),
            real in prop::option::of(address_header()),
            original in any::<bool>(),
        ) {
            let mode = if original { ClientIpMode::Original } else { ClientIpMode::Forwarded };
            let c = cfg(mode, &["10.0.0.0/8", "::1/128"]);
            let mut h = HeaderMap::new();
            for line in forwarded {
                h.append(X_FORWARDED_FOR, line);
            }
            if let Some(real) = real {
                h.insert(X_REAL_IP, real);
            }
            let got = c.resolve(peer, &h);
            if !c.is_trusted(peer) {
                prop_assert_eq!(got, normalize(peer), "an untrusted peer is the client");
            } else {
                prop_assert!(
                    got == normalize(peer) || written(&h).contains(&got),
                    "{} is neither the peer nor written in {:?}", got, h
                );
            }
            prop_assert_eq!(got, normalize(got), "mapped addresses come back as IPv4");
        }

        #[test]
        fn what_a_client_writes_cannot_move_it_past_our_proxies(
            junk in prop::collection::vec(any::<u8>(), 0..48),
            own_line in any::<bool>(),
            client in prop::sample::select(vec!["203.0.113.7", "2001:db8::1", "198.51.100.200"]),
            hops in prop::collection::vec(prop::sample::select(vec!["10.0.0.2", "10.1.2.3", "::1"]), 0..3),
        ) {
            // The client sent `junk` as its own X-Forwarded-For; the first proxy appended the
            // client's address, each further proxy the address of the one before it.
            let c = cfg(ClientIpMode::Forwarded, &["10.0.0.0/8", "::1/128"]);
            let mut appended = client.to_string();
            for hop in &hops {
                appended.push_str(", ");
                appended.push_str(hop);
            }
            let mut h = HeaderMap::new();
            if own_line {
                // The proxy kept the client's line and added its own.
                h.append(X_FORWARDED_FOR, value_of(junk));
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(&appended).unwrap());
            } else {
                // The proxy appended to the client's line (nginx' $proxy_add_x_forwarded_for).
                let mut line = junk;
                line.extend_from_slice(b", ");
                line.extend_from_slice(appended.as_bytes());
                h.append(X_FORWARDED_FOR, value_of(line));
            }
            prop_assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip(client), "{:?}", h);
        }
    }
}
