//! What a list entry may hold, checked wherever entries come from (the admin API, `graygate
//! import`): a key every store can hold, a key a client-IP list can match, and a TTL every store
//! and the system clock can represent. One set of checks, so that no way in accepts what another
//! refuses.

use std::net::IpAddr;
use std::time::Duration;

/// Longest key: memcached's limit, which every store can hold.
pub const MAX_KEY_LEN: usize = 250;

/// Longest TTL: ten years (of 365.25 days, as `10y` reads). Far beyond any gray release, and far
/// inside what `SystemTime` and the stores' expiry fields can hold (a TTL of `500000000000y`
/// would overflow the clock).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 31_557_600);

/// Why a key or TTL is refused. The message does not name the field: the caller does (the JSON
/// path in the admin API, `file:line` in an import).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("`{}` is not a key: 1 to {MAX_KEY_LEN} bytes without spaces or control characters", .0.escape_debug())]
    Key(String),
    #[error("`{key}` is not an IP address, and this list is looked up by client IP ({rule}): it would never match")]
    NotIp { key: String, rule: String },
    #[error("`{}` is {escaped_len} bytes once escaped as the original's memcached client escapes it (`{}`), and a memcached key holds at most {MAX_KEY_LEN}", .key.escape_debug(), .escaped.escape_debug())]
    EscapedKeyTooLong {
        key: String,
        /// The key as memcached would get it.
        escaped: String,
        escaped_len: usize,
    },
    #[error("`{0}` is not a duration like \"1h\" or \"30m\": {1}")]
    NotDuration(String, String),
    #[error("`{0}` is shorter than a second (stores keep whole seconds)")]
    TtlTooShort(String),
    #[error("`{0}` is longer than the longest TTL, 10 years (remove the TTL to keep entries until removed)")]
    TtlTooLong(String),
}

/// Checks a key: every store must be able to hold it, and a list that rules look the client IP
/// up in (`ip_rule` names the first such condition) only matches IP addresses.
pub fn check_key(key: &str, ip_rule: Option<&str>) -> Result<(), EntryError> {
    if key.is_empty()
        || key.len() > MAX_KEY_LEN
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(EntryError::Key(key.to_string()));
    }
    if let Some(rule) = ip_rule {
        if key.parse::<IpAddr>().is_err() {
            return Err(EntryError::NotIp {
                key: key.to_string(),
                rule: rule.to_string(),
            });
        }
    }
    Ok(())
}

/// Checks a TTL given as `text`: 1 second to [`MAX_TTL`]. Shorter would be cut to nothing by
/// the stores; longer could overflow the clock when the expiry time is computed.
pub fn check_ttl(text: &str, ttl: Duration) -> Result<Duration, EntryError> {
    if ttl < Duration::from_secs(1) {
        Err(EntryError::TtlTooShort(text.to_string()))
    } else if ttl > MAX_TTL {
        Err(EntryError::TtlTooLong(text.to_string()))
    } else {
        Ok(ttl)
    }
}

/// Parses and checks a TTL like `1h` (see [`check_ttl`]).
pub fn parse_ttl(text: &str) -> Result<Duration, EntryError> {
    let ttl = humantime::parse_duration(text)
        .map_err(|e| EntryError::NotDuration(text.to_string(), e.to_string()))?;
    check_ttl(text, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_every_store_can_hold() {
        check_key("10.0.0.7", Some("services[0].rules[0].when")).unwrap();
        check_key("TOKEN_abc", None).unwrap();
        check_key(&"x".repeat(MAX_KEY_LEN), None).unwrap();
        assert!(matches!(
            check_key(&"x".repeat(300), None),
            Err(EntryError::Key(_))
        ));
        assert!(matches!(check_key("", None), Err(EntryError::Key(_))));
        let e = check_key("a\r\nb", None).unwrap_err();
        assert!(e.to_string().starts_with(r"`a\r\nb` is not a key"), "{e}");
        let e = check_key("alice", Some("services[0].rules[0].when")).unwrap_err();
        assert!(e.to_string().contains("is not an IP address"), "{e}");
    }

    #[test]
    fn ttls_run_from_a_second_to_ten_years() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("10y").unwrap(), MAX_TTL);
        assert_eq!(
            parse_ttl("3652d").unwrap(),
            Duration::from_secs(3652 * 86_400)
        );
        assert!(matches!(
            parse_ttl("500ms"),
            Err(EntryError::TtlTooShort(_))
        ));
        assert!(matches!(
            parse_ttl("soon"),
            Err(EntryError::NotDuration(..))
        ));
        // Once a panic when the expiry time was computed.
        let e = parse_ttl("500000000000y").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`500000000000y` is longer than the longest TTL, 10 years (remove the TTL to keep entries until removed)"
        );
        assert!(matches!(parse_ttl("3653d"), Err(EntryError::TtlTooLong(_))));
    }
}
