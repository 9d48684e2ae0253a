//! The `[metrics]`, `[access_log]` and `[log]` tables: what the operator sees of the traffic
//! and of graygate itself.
//!
//! ```toml
//! [metrics]
//! listen = "127.0.0.1:9091"   # absent: no metrics listener
//! max_connections = 16        # scrape connections open at once
//!
//! [access_log]
//! format = "json"             # off (default), text, json
//! path = "access.log"         # "-" (default): stdout; relative to the config's directory
//!
//! [log]
//! format = "json"             # text (default), json: graygate's own messages on stderr
//! ```

use super::file::{AccessLogFile, LogFile, MetricsFile};
use super::ConfigError;
use crate::observe::{AccessLogFormat, AccessLogTarget};
use crate::proxy::listen::DEFAULT_METRICS_MAX_CONNECTIONS;
use std::net::SocketAddr;
use std::path::Path;

/// How graygate's own messages (the process log, on stderr) are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per message (the default); coloured only when stderr is a
    /// terminal.
    #[default]
    Text,
    /// One JSON object per message, for a log collector.
    Json,
}

/// The `[log]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// Text or JSON lines. Which messages are written is `GRAYGATE_LOG` (default `info`).
    pub format: LogFormat,
}

/// Where the Prometheus metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the metrics listener, apart from the traffic listeners so that the metrics
    /// are not served to clients; `None`: no listener, and nothing is counted.
    pub listen: Option<SocketAddr>,
    /// Scrape connections open at once: a flood of them can take neither the data plane's file
    /// descriptors nor more than this many of its own.
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            max_connections: DEFAULT_METRICS_MAX_CONNECTIONS,
        }
    }
}

/// Whether and where the access log is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// `Off` (the default) writes nothing and costs nothing per request.
    pub format: AccessLogFormat,
    /// Stdout, or a file (resolved against the config's directory), appended to.
    pub target: AccessLogTarget,
}

/// Validates both tables. `listen` is the traffic listeners', which the metrics listener must
/// not take; `base` is the config's directory.
pub(super) fn observe_config(
    metrics: &MetricsFile,
    access_log: &AccessLogFile,
    listen: &[SocketAddr],
    base: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(MetricsConfig, AccessLogConfig), ConfigError> {
    let metrics_listen = match &metrics.listen {
        None => None,
        Some(text) => Some(super::own_address(
            "metrics.listen",
            text,
            9091,
            listen,
            "the metrics need an address of their own",
            at,
        )?),
    };

    let format = match access_log.format.as_deref().unwrap_or("off") {
        "off" => AccessLogFormat::Off,
        "text" => AccessLogFormat::Text,
        "json" => AccessLogFormat::Json,
        other => {
            return Err(at(
                "access_log.format",
                format!("unknown format `{other}` (known: off, text, json)"),
            ))
        }
    };
    let target = match access_log.path.as_deref() {
        None | Some("-") => AccessLogTarget::Stdout,
        Some("") => {
            return Err(at(
                "access_log.path",
                "empty path: give a file, or \"-\" for stdout".into(),
            ))
        }
        Some(p) => {
            let path = base.join(p);
            // Found by `graygate check` rather than at start; the file itself is created then.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                return Err(at(
                    "access_log.path",
                    format!("directory {} does not exist", dir.display()),
                ));
            }
            AccessLogTarget::File(path)
        }
    };
    let max_connections = super::connection_limit(
        "metrics.max_connections",
        metrics.max_connections,
        DEFAULT_METRICS_MAX_CONNECTIONS,
        at,
    )?;
    Ok((
        MetricsConfig {
            listen: metrics_listen,
            max_connections,
        },
        AccessLogConfig { format, target },
    ))
}

/// Validates `[log]`.
pub(super) fn log_config(
    log: &LogFile,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<LogConfig, ConfigError> {
    let format = match log.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(at(
                "log.format",
                format!("unknown format `{other}` (known: text, json)"),
            ))
        }
    };
    Ok(LogConfig { format })
}

#[cfg(test)]
mod tests {
    use super::LogFormat;
    use crate::config::{parse, ConfigError};
    use crate::observe::{AccessLogFormat, AccessLogTarget};
    use std::path::Path;

    const BASE: &str = "listen = [\"127.0.0.1:8080\"]\n";

    fn config(extra: &str) -> Result<crate::config::Config, ConfigError> {
        parse(
            &format!("{BASE}{extra}"),
            Path::new("/etc/graygate/graygate.toml"),
        )
    }

    fn error(extra: &str) -> String {
        config(extra).expect_err("invalid").to_string()
    }

    #[test]
    fn defaults_are_off() {
        let c = config("").unwrap();
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.access_log.format, AccessLogFormat::Off);
        assert_eq!(c.access_log.target, AccessLogTarget::Stdout);
        assert!(!c.response_version_header);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn reads_the_process_log_format() {
        let c = config("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let c = config("[log]\nformat = \"text\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(config("[log]\n").unwrap().log.format, LogFormat::Text);
    }

    #[test]
    fn reads_metrics_access_log_and_response_header() {
        let c = config(
            "response_version_header = true\n[metrics]\nlisten = \"127.0.0.1:9091\"\n\
             [access_log]\nformat = \"json\"\npath = \"/tmp/access.log\"\n",
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(c.access_log.format, AccessLogFormat::Json);
        assert_eq!(
            c.access_log.target,
            AccessLogTarget::File("/tmp/access.log".into())
        );
        assert!(c.response_version_header);

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let c = parse(
            &format!("{BASE}[access_log]\nformat = \"text\"\npath = \"logs/access.log\"\n"),
            &dir.path().join("graygate.toml"),
        )
        .unwrap();
        assert_eq!(c.access_log.format, AccessLogFormat::Text);
        assert_eq!(
            c.access_log.target,
            AccessLogTarget::File(dir.path().join("logs/access.log"))
        );
        let c = config("[access_log]\nformat = \"text\"\npath = \"-\"\n").unwrap();
        assert_eq!(c.access_log.target, AccessLogTarget::Stdout);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        assert_eq!(
            error("[access_log]\nformat = \"xml\"\n"),
            "/etc/graygate/graygate.toml:3:1: access_log.format: unknown format `xml` (known: off, text, json)"
        );
        assert_eq!(
            error("[metrics]\nlisten = \"localhost\"\n"),
            "/etc/graygate/graygate.toml:3:1: metrics.listen: `localhost` is not an address like 127.0.0.1:9091 or [::1]:9091"
        );
        assert_eq!(
            error("[metrics]\nlisten = \"127.0.0.1:8080\"\n"),
            "/etc/graygate/graygate.toml:3:1: metrics.listen: 127.0.0.1:8080 is also in `listen`: the metrics need an address of their own"
        );
        assert_eq!(
            error("[access_log]\nformat = \"json\"\npath = \"\"\n"),
            "/etc/graygate/graygate.toml:4:1: access_log.path: empty path: give a file, or \"-\" for stdout"
        );
        assert_eq!(
            error("[access_log]\nformat = \"json\"\npath = \"/no/such/dir/access.log\"\n"),
            "/etc/graygate/graygate.toml:4:1: access_log.path: directory /no/such/dir does not exist"
        );
        assert_eq!(
            error("[log]\nformat = \"logfmt\"\n"),
            "/etc/graygate/graygate.toml:3:1: log.format: unknown format `logfmt` (known: text, json)"
        );
        let level = error("[log]\nlevel = \"debug\"\n");
        assert!(
            level.starts_with("/etc/graygate/graygate.toml:3:1: level: unknown field `level`"),
            "{level}"
        );
        let unknown = error("[metrics]\nport = 9091\n");
        assert!(
            unknown.starts_with("/etc/graygate/graygate.toml:3:1: port: unknown field `port`"),
            "{unknown}"
        );
        let not_bool = error("response_version_header = \"yes\"\n");
        assert!(
            not_bool.starts_with("/etc/graygate/graygate.toml:2:"),
            "{not_bool}"
        );
    }
}
