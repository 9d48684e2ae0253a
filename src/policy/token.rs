//! The values graygate signs and checks on the request path: a split's bucket id (the sticky
//! cookie of anonymous visitors) and a tester override's secret or expiring signed value.
//!
//! Pure like the rest of the core: the random bits and the current time come in from the caller.
//! Signatures are HMAC-SHA256 (ring, already in the tree through rustls), truncated to 128 bits and
//! written as hex; every comparison of a secret or a signature runs in constant time (`subtle`), so
//! that timing does not tell a client how much of a guess was right.

use ring::hmac;
use subtle::ConstantTimeEq;

/// Bytes of the HMAC tag kept (and hex-encoded) in a signed value.
const TAG_BYTES: usize = 16;

/// A compiled HMAC key.
#[derive(Clone)]
pub struct SigningKey(hmac::Key);

impl SigningKey {
    pub fn new(secret: &str) -> Self {
        SigningKey(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    fn tag(&self, message: &[u8]) -> String {
        hex(&hmac::sign(&self.0, message).as_ref()[..TAG_BYTES])
    }

    /// Whether `tag` (hex) is the tag of `message`, compared in constant time.
    fn verify(&self, message: &[u8], tag: &str) -> bool {
        let expected = self.tag(message);
        bool::from(expected.as_bytes().ct_eq(tag.as_bytes()))
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A new bucket id from 64 random bits, signed when the split's cookie has a key:
/// `<16 hex>` or `<16 hex>.<32 hex>`.
pub fn new_bucket_id(random: u64, key: Option<&SigningKey>) -> String {
    let id = format!("{random:016x}");
    match key {
        None => id,
        Some(key) => {
            let tag = key.tag(bucket_message(&id).as_bytes());
            format!("{id}.{tag}")
        }
    }
}

fn bucket_message(id: &str) -> String {
    format!("graygate-bucket:{id}")
}

/// The bucket id a cookie value carries, if the value is valid: 1 to 64 characters of
/// `[0-9A-Za-z_-]`, and, with a key, followed by `.` and the id's signature.
pub fn bucket_id_of<'v>(value: &'v str, key: Option<&SigningKey>) -> Option<&'v str> {
    let plain = |id: &str| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match key {
        None => plain(value).then_some(value),
        Some(key) => {
            let (id, tag) = value.split_once('.')?;
            (plain(id) && key.verify(bucket_message(id).as_bytes(), tag)).then_some(id)
        }
    }
}

/// Why an override value was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideCheck {
    Valid,
    /// Neither the secret nor a valid signature.
    BadSecret,
    /// A signed value past its expiry.
    Expired,
}

/// Checks the part of an override value after `always:` against the override's secret and key.
/// `now` is Unix seconds.
pub fn check_override(
    rest: Option<&str>,
    secret: Option<&str>,
    key: Option<&SigningKey>,
    service: &str,
    version: &str,
    now: u64,
) -> OverrideCheck {
    if secret.is_none() && key.is_none() {
        return OverrideCheck::Valid;
    }
    let Some(rest) = rest else {
        return OverrideCheck::BadSecret;
    };
    if let Some(secret) = secret {
        if bool::from(secret.as_bytes().ct_eq(rest.as_bytes())) {
            return OverrideCheck::Valid;
        }
    }
    if let Some(key) = key {
        if let Some((expiry, tag)) = rest.split_once(':') {
            if let Ok(expires) = expiry.parse::<u64>() {
                let message = override_message(service, version, expires);
                if key.verify(message.as_bytes(), tag) {
                    return if now <= expires {
                        OverrideCheck::Valid
                    } else {
                        OverrideCheck::Expired
                    };
                }
            }
        }
    }
    OverrideCheck::BadSecret
}

fn override_message(service: &str, version: &str, expires: u64) -> String {
    format!("graygate-override:{service}:{version}:{expires}")
}

/// The override value a tester sends (`always:<expiry>:<signature>`), valid for `service`'s
/// override to `version` until `expires` (Unix seconds).
pub fn override_value(key: &SigningKey, service: &str, version: &str, expires: u64) -> String {
    let tag = key.tag(override_message(service, version, expires).as_bytes());
    format!("always:{expires}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsigned_bucket_id_is_taken_when_its_characters_are_plain() {
        let id = new_bucket_id(0xdead_beef, None);
        assert_eq!(id, "00000000deadbeef");
        assert_eq!(bucket_id_of(&id, None), Some("00000000deadbeef"));
        assert_eq!(bucket_id_of("", None), None);
        assert_eq!(bucket_id_of("a b", None), None);
        assert_eq!(bucket_id_of(&"a".repeat(65), None), None);
    }

    #[test]
    fn a_signed_bucket_id_is_taken_only_with_its_own_signature() {
        let key = SigningKey::new("k1");
        let value = new_bucket_id(42, Some(&key));
        assert_eq!(bucket_id_of(&value, Some(&key)), Some("000000000000002a"));
        // Unsigned, forged, signed with another key, or the signature of another id.
        assert_eq!(bucket_id_of("000000000000002a", Some(&key)), None);
        assert_eq!(bucket_id_of("000000000000002a.00", Some(&key)), None);
        let other = new_bucket_id(42, Some(&SigningKey::new("k2")));
        assert_eq!(bucket_id_of(&other, Some(&key)), None);
        let tag = value.split_once('.').unwrap().1;
        assert_eq!(
            bucket_id_of(&format!("000000000000002b.{tag}"), Some(&key)),
            None
        );
    }

    #[test]
    fn an_override_needs_its_secret_or_an_unexpired_signature() {
        let key = SigningKey::new("tester-key");
        let check = |rest, secret, key, now| check_override(rest, secret, key, "web", "v2", now);
        assert_eq!(check(None, None, None, 0), OverrideCheck::Valid);
        assert_eq!(check(None, Some("s3"), None, 0), OverrideCheck::BadSecret);
        assert_eq!(check(Some("s3"), Some("s3"), None, 0), OverrideCheck::Valid);
        assert_eq!(
            check(Some("s4"), Some("s3"), None, 0),
            OverrideCheck::BadSecret
        );

        let value = override_value(&key, "web", "v2", 1_000);
        let rest = value.strip_prefix("always:");
        assert_eq!(check(rest, None, Some(&key), 999), OverrideCheck::Valid);
        assert_eq!(check(rest, None, Some(&key), 1_000), OverrideCheck::Valid);
        assert_eq!(check(rest, None, Some(&key), 1_001), OverrideCheck::Expired);
        // Another service's, another key's, or a moved expiry's value is no good.
        let other = override_value(&key, "api", "v2", 1_000);
        assert_eq!(
            check(other.strip_prefix("always:"), None, Some(&key), 0),
            OverrideCheck::BadSecret
        );
        let tag = value.rsplit_once(':').unwrap().1;
        let moved = format!("2000:{tag}");
        assert_eq!(
            check(Some(&moved), None, Some(&key), 0),
            OverrideCheck::BadSecret
        );
        assert_eq!(
            check(rest, None, Some(&SigningKey::new("x")), 0),
            OverrideCheck::BadSecret
        );
    }
}
