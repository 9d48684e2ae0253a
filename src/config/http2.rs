//! The `[http2]` table: the flood limits of HTTP/2 client connections, on by default.
//!
//! ```toml
//! [http2]
//! max_concurrent_streams = 100            # streams open at once per connection
//! max_pending_accept_reset_streams = 20   # Rapid Reset (CVE-2023-44487)
//! max_local_error_reset_streams = 1024    # streams reset for the client's errors
//! ```
//!
//! The header list size is not here: it is `max_header_bytes`, the same bound as an HTTP/1.1
//! request head.

use super::file::Http2File;
use super::ConfigError;
use crate::proxy::Http2Settings;

/// Validates `[http2]`: every limit at least 1.
pub(super) fn http2_config(
    file: &Http2File,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Http2Settings, ConfigError> {
    let defaults = Http2Settings::default();
    let at_least_one = |field: &str, value: Option<usize>, default: usize| match value {
        None => Ok(default),
        Some(0) => Err(at(
            &format!("http2.{field}"),
            "must be at least 1: it is a limit, and 0 would refuse every client".into(),
        )),
        Some(n) => Ok(n),
    };
    let streams = at_least_one(
        "max_concurrent_streams",
        file.max_concurrent_streams.map(|n| n as usize),
        defaults.max_concurrent_streams as usize,
    )?;
    Ok(Http2Settings {
        max_concurrent_streams: u32::try_from(streams).unwrap_or(u32::MAX),
        max_pending_accept_reset_streams: at_least_one(
            "max_pending_accept_reset_streams",
            file.max_pending_accept_reset_streams,
            defaults.max_pending_accept_reset_streams,
        )?,
        max_local_error_reset_streams: at_least_one(
            "max_local_error_reset_streams",
            file.max_local_error_reset_streams,
            defaults.max_local_error_reset_streams,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::proxy::Http2Settings;
    use std::path::Path;

    fn config(extra: &str) -> Result<crate::config::Config, String> {
        parse(
            &format!("listen = [\"127.0.0.1:8080\"]\n{extra}"),
            Path::new("g.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(config("").unwrap().http2, Http2Settings::default());
        let c = config(
            "[http2]\nmax_concurrent_streams = 10\nmax_pending_accept_reset_streams = 5\n\
             max_local_error_reset_streams = 50\n",
        )
        .unwrap();
        assert_eq!(
            c.http2,
            Http2Settings {
                max_concurrent_streams: 10,
                max_pending_accept_reset_streams: 5,
                max_local_error_reset_streams: 50,
            }
        );
    }

    #[test]
    fn zero_is_refused_with_its_field() {
        assert_eq!(
            config("[http2]\nmax_concurrent_streams = 0\n").unwrap_err(),
            "g.toml:3:1: http2.max_concurrent_streams: must be at least 1: it is a limit, and 0 would refuse every client"
        );
        assert!(config("[http2]\nmax_streams = 1\n")
            .unwrap_err()
            .starts_with("g.toml:3:1: max_streams: unknown field `max_streams`"));
    }
}
