//! How a list's keys are written in memcached: as they are, or escaped the way the original
//! nginx + lua design's client escapes them.
//!
//! The original reads its gray list with lua-resty-memcached, which passes every key through
//! `ngx.escape_uri` before it goes on the wire (`get`, `set`, `delete`...). Keys made only of
//! letters, digits and `.` (an IPv4 address, `TOKEN_abc`) come out unchanged, so both layouts
//! agree on them; anything else does not: the IPv6 client `2001:db8::1` is stored as
//! `2001%3Adb8%3A%3A1`, and a multi-hop `X-Forwarded-For` header `10.0.0.7, 10.0.0.9` as
//! `10.0.0.7%2C%2010.0.0.9`. A list set to [`KeyEscape::Uri`] reads and writes those same keys.
//!
//! The escaping is `ngx.escape_uri`'s, checked byte by byte against nginx 1.22.1 with
//! lua-nginx-module 0.10.23 (`testdata/ngx_escape_uri.txt`): every byte but ASCII letters,
//! digits and `-._~!*'()` becomes `%XX` with upper-case hex. `%` itself is escaped, so two
//! different keys never share an escaped form, and the escaped form reads back to the key.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::borrow::Cow;

/// The bytes `ngx.escape_uri` escapes: everything but letters, digits and `-._~!*'()`.
const NGX_ESCAPE_URI: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// How one list's keys are written in memcached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyEscape {
    /// As they are (`2001:db8::1`): graygate's own layout, and the default.
    #[default]
    None,
    /// Through `ngx.escape_uri` (`2001%3Adb8%3A%3A1`), as the original's lua-resty-memcached
    /// client writes and reads them.
    Uri,
}

impl KeyEscape {
    /// Every setting, by its name in the config.
    pub const ALL: [(&'static str, KeyEscape); 2] =
        [("none", KeyEscape::None), ("uri", KeyEscape::Uri)];

    /// The setting named `name` in the config (`none`, `uri`).
    pub fn from_name(name: &str) -> Option<KeyEscape> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, escape)| *escape)
    }

    /// `key` as this setting writes it in memcached; borrowed when nothing changes.
    pub fn apply<'k>(self, key: &'k str) -> Cow<'k, str> {
        match self {
            KeyEscape::None => Cow::Borrowed(key),
            KeyEscape::Uri => escape_uri(key),
        }
    }
}

/// `key` escaped as `ngx.escape_uri` escapes it.
pub fn escape_uri(key: &str) -> Cow<'_, str> {
    utf8_percent_encode(key, NGX_ESCAPE_URI).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What nginx itself answered for every byte (see the file's header).
    const NGINX_TABLE: &str = include_str!("testdata/ngx_escape_uri.txt");

    /// The slow, obvious twin: escapes byte by byte from the rule as nginx's table states it.
    fn escape_by_rule(key: &[u8]) -> String {
        key.iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"-._~!*'()".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    /// Reads an escaped key back (what lua-resty-memcached's `ngx.unescape_uri` does to the
    /// keys of a `get` answer).
    fn unescape(escaped: &str) -> Vec<u8> {
        percent_encoding::percent_decode_str(escaped).collect()
    }

    #[test]
    fn every_byte_is_escaped_as_nginx_escapes_it() {
        let mut seen = 0;
        for line in NGINX_TABLE.lines().filter(|l| !l.starts_with('#')) {
            let (hex, want) = line.split_once(' ').expect("`byte escaped` lines");
            let byte = u8::from_str_radix(hex, 16).expect("a hex byte");
            // A lone byte past 0x7f is no UTF-8 string: check the rule's twin with it, and
            // the real escaping with ASCII (multi-byte characters are checked below).
            assert_eq!(escape_by_rule(&[byte]), want, "byte {hex}");
            if byte.is_ascii() {
                let key = char::from(byte).to_string();
                assert_eq!(escape_uri(&key), want, "byte {hex}");
            }
            seen += 1;
        }
        assert_eq!(seen, 256, "the table has every byte");
    }

    #[test]
    fn keys_as_the_original_writes_them() {
        // Checked against nginx 1.22.1's `ngx.escape_uri`, one by one.
        for (key, escaped) in [
            ("10.0.0.7", "10.0.0.7"),
            ("TOKEN_abc", "TOKEN_abc"),
            ("2001:db8::1", "2001%3Adb8%3A%3A1"),
            ("10.0.0.7, 10.0.0.9", "10.0.0.7%2C%2010.0.0.9"),
            ("jürgen", "j%C3%BCrgen"),
            ("100%", "100%25"),
        ] {
            assert_eq!(KeyEscape::Uri.apply(key), escaped, "{key}");
            assert_eq!(KeyEscape::None.apply(key), key, "{key}");
        }
        // Nothing to escape: no copy.
        assert!(matches!(KeyEscape::Uri.apply("10.0.0.7"), Cow::Borrowed(_)));
    }

    #[test]
    fn settings_by_name() {
        assert_eq!(KeyEscape::from_name("uri"), Some(KeyEscape::Uri));
        assert_eq!(KeyEscape::from_name("none"), Some(KeyEscape::None));
        assert_eq!(KeyEscape::from_name("URI"), None);
        assert_eq!(KeyEscape::default(), KeyEscape::None);
    }

    proptest! {
        #[test]
        fn escaping_follows_the_rule_reads_back_and_never_merges_two_keys(
            a in any::<String>(),
            b in any::<String>(),
        ) {
            let ea = escape_uri(&a);
            prop_assert_eq!(&*ea, escape_by_rule(a.as_bytes()));
            prop_assert_eq!(unescape(&ea), a.as_bytes());
            // Only the unreserved bytes and `%XX` are left: memcached takes every escaped key
            // whatever the input (no space, no control character).
            prop_assert!(ea.bytes().all(|c| c.is_ascii_graphic()));
            if a != b {
                prop_assert_ne!(ea, escape_uri(&b));
            }
        }

        #[test]
        fn ip_addresses_escape_as_the_original_sees_them(ip in any::<std::net::IpAddr>()) {
            let text = ip.to_string();
            let escaped = escape_uri(&text);
            // IPv4 is unchanged; IPv6 has each `:` as `%3A` and nothing else changed.
            prop_assert_eq!(&*escaped, text.replace(':', "%3A"));
        }
    }
}
