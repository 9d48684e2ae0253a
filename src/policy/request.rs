//! Reading a request: the value a rule's source (a header, a cookie, a query parameter, the client
//! IP) has in it, and that value read as a number.
//!
//! Evaluation reads each source of a service at most once per request, and parses it as a number
//! at most once, through a [`Memo`] of the request's sources. Reading borrows from the request
//! whenever it can: a header or a cookie is a slice of the header value, a query parameter is one
//! unless it is percent-encoded, and only the client IP is formatted (for a test other than
//! `cidr`, which reads the address itself).

use super::compiled::Source;
use super::RequestFacts;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Sources whose values an evaluation keeps on the stack; a service reading more allocates.
pub(super) const INLINE_SLOTS: usize = 16;

/// What one evaluation has read of one source so far. `None`: not read yet.
pub(super) struct Slot<'a> {
    raw: Option<Option<Cow<'a, str>>>,
    number: Option<Option<f64>>,
    integer: Option<Option<i64>>,
}

impl Slot<'_> {
    pub(super) const EMPTY: Self = Slot {
        raw: None,
        number: None,
        integer: None,
    };
}

/// The sources of a service as one request gives them, read and parsed on first use.
pub(super) struct Memo<'m, 'a> {
    pub facts: &'m RequestFacts<'a>,
    /// The service's source table; slot `i` holds what was read of source `i`.
    pub sources: &'m [Source],
    pub slots: &'m mut [Slot<'a>],
}

impl<'a> Memo<'_, 'a> {
    /// The raw value of the source in slot `i`, if the request has it.
    #[inline]
    pub(super) fn raw(&mut self, i: usize) -> Option<&str> {
        let slot = &mut self.slots[i];
        slot.raw
            .get_or_insert_with(|| source_value(&self.sources[i], self.facts))
            .as_deref()
    }

    /// The value as a number ([`parse_number`]).
    #[inline]
    pub(super) fn number(&mut self, i: usize) -> Option<f64> {
        if let Some(n) = self.slots[i].number {
            return n;
        }
        let n = self.raw(i).and_then(parse_number);
        self.slots[i].number = Some(n);
        n
    }

    /// The value as an integer ([`parse_integer`]).
    #[inline]
    pub(super) fn integer(&mut self, i: usize) -> Option<i64> {
        if let Some(n) = self.slots[i].integer {
            return n;
        }
        let n = self.raw(i).and_then(parse_integer);
        self.slots[i].integer = Some(n);
        n
    }
}

/// The host name of a `Host` header (or URI authority): without its port, and without the
/// brackets of an IPv6 address.
pub(super) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A number as Lua's `tonumber` reads it (the original designs compare with it): surrounding
/// white space allowed, decimal with optional fraction and exponent, or `0x` hexadecimal.
pub(super) fn parse_number(text: &str) -> Option<f64> {
    // The usual identity, a plain decimal integer short enough to be exact as an `f64`, without
    // the float parser (profile of issue 15); the same value the general path reads.
    if (1..=15).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(text.bytes().fold(0u64, |n, b| n * 10 + u64::from(b - b'0')) as f64);
    }
    let t = text.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let n = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()? as f64
    } else {
        // Rust's float syntax also takes "inf" and "nan", which tonumber does not.
        if !body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    n.is_finite().then_some(if neg { -n } else { n })
}

/// An integer identity: a number as [`parse_number`] reads it, with no fraction.
pub(super) fn parse_integer(text: &str) -> Option<i64> {
    if let Ok(n) = text.trim().parse::<i64>() {
        return Some(n);
    }
    let n = parse_number(text)?;
    (n.fract() == 0.0 && n.abs() < 9.0e15).then_some(n as i64)
}

/// The raw value a source names in the request, if present.
pub(super) fn source_value<'a>(source: &Source, facts: &RequestFacts<'a>) -> Option<Cow<'a, str>> {
    match source {
        Source::Header(name) => facts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed),
        Source::Cookie(name) => cookie(facts.headers, name).map(Cow::Borrowed),
        Source::Query(name) => query_param(facts.query?, name),
        Source::ClientIp => {
            let mut text = String::with_capacity(15);
            push_ip(&mut text, facts.client_ip);
            Some(Cow::Owned(text))
        }
    }
}

/// The first cookie named `name`, with surrounding white space and quotes removed.
///
/// A header value that `to_str` accepts holds visible ASCII, spaces and tabs only, so the ASCII
/// trim is the whole of `str::trim` here, without its Unicode tables (profile of issue 15).
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_in(v, name))
}

/// The first cookie named `name` in one `Cookie` header value.
fn cookie_in<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim_ascii() == name).then(|| v.trim_ascii().trim_matches('"'))
    })
}

/// The first query parameter named `name`, percent-decoded; a bare `name` reads as empty.
fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// `%XX` and `+` decoded; invalid UTF-8 becomes U+FFFD. Borrows when there is nothing to decode.
fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.contains(['%', '+']) {
        return Cow::Borrowed(v);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Appends `ip` as text. IPv4, nearly every peer, is written digit by digit: the formatting
/// machinery cost more than the rest of the header (profile of issue 15): the
/// `X-Real-IP` and `X-Forwarded-For` graygate sends, and a rule's `client_ip` as text.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use std::net::IpAddr;

    #[test]
    fn ips_are_written_as_display_writes_them() {
        // Every octet length at every place, against std's Display, and IPv6 through it.
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "10.0.0.7",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    proptest::proptest! {
        #[test]
        fn every_ipv4_address_is_written_as_display_writes_it(bits: u32) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(bits));
            let mut out = String::new();
            push_ip(&mut out, ip);
            proptest::prop_assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn numbers_read_as_lua_tonumber() {
        assert_eq!(parse_number(" 12 "), Some(12.0));
        assert_eq!(parse_number("1e3"), Some(1000.0));
        assert_eq!(parse_number("0x10"), Some(16.0));
        assert_eq!(parse_number("-2.5"), Some(-2.5));
        assert_eq!(parse_number("nan"), None);
        assert_eq!(parse_number("inf"), None);
        assert_eq!(parse_number("12abc"), None);
        assert_eq!(parse_number(""), None);
    }

    proptest::proptest! {
        /// The integer fast path reads what the float parser reads.
        #[test]
        fn plain_integers_read_as_the_float_parser_reads_them(n in 0u64..1_000_000_000_000_000, zeros in 0usize..3) {
            let text = format!("{}{n}", "0".repeat(zeros));
            let expected = text.parse::<f64>().ok().filter(|_| !text.is_empty());
            proptest::prop_assert_eq!(parse_number(&text), expected);
        }

        /// The ASCII trim finds what `str::trim` found in any header value `to_str` accepts.
        #[test]
        fn cookies_read_as_with_the_unicode_trim(value in "[ \t!-~]{0,40}", name in "[ a-z=\"]{0,4}") {
            let before = value.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"'))
            });
            proptest::prop_assert_eq!(cookie_in(&value, &name), before);
        }
    }

    #[test]
    fn integers_have_no_fraction() {
        assert_eq!(parse_integer(" 42 "), Some(42));
        assert_eq!(parse_integer("0x10"), Some(16));
        assert_eq!(parse_integer("7.0"), Some(7));
        assert_eq!(parse_integer("7.5"), None);
        assert_eq!(parse_integer("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_integer("abc"), None);
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(strip_port("example.com:x"), "example.com:x");
    }

    #[test]
    fn sources_read_from_the_request() {
        // Two cookie headers: both are read.
        let headers: HeaderMap = [
            ("x-env", "beta"),
            ("cookie", "a=1; group=\"beta\""),
            ("cookie", "z=2"),
        ]
        .into_iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect();
        let facts = RequestFacts {
            host: "example.com",
            path: "/",
            query: Some("x=1&ab=new%20ui+2&flag&pct=%zz"),
            client_ip: "192.0.2.1".parse::<IpAddr>().unwrap(),
            client_key: None,
            headers: &headers,
            random: 0,
            now: 0,
            https: false,
            followed: None,
        };
        let read = |source: Source| source_value(&source, &facts).map(|v| v.into_owned());
        let header = |name: &str| Source::Header(name.parse().unwrap());
        assert_eq!(read(header("x-env")).as_deref(), Some("beta"));
        assert_eq!(read(header("x-other")), None);
        assert_eq!(
            read(Source::Cookie("group".into())).as_deref(),
            Some("beta")
        );
        assert_eq!(read(Source::Cookie("z".into())).as_deref(), Some("2"));
        assert_eq!(read(Source::Cookie("roup".into())), None);
        assert_eq!(
            read(Source::Query("ab".into())).as_deref(),
            Some("new ui 2")
        );
        assert_eq!(read(Source::Query("flag".into())).as_deref(), Some(""));
        assert_eq!(read(Source::Query("pct".into())).as_deref(), Some("%zz"));
        assert_eq!(read(Source::Query("y".into())), None);
        assert_eq!(read(Source::ClientIp).as_deref(), Some("192.0.2.1"));
        // Nothing to decode: borrowed, not copied.
        assert!(matches!(
            source_value(&Source::Query("x".into()), &facts),
            Some(Cow::Borrowed("1"))
        ));
    }
}
