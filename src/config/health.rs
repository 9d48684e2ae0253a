//! An upstream's `health` and `passive` settings as written, turned into the data plane's
//! [`HealthCheck`] and [`PassiveHealth`] with their defaults.
//!
//! What is checked here is what only the file can get wrong (a duration that does not parse);
//! whether the values can work together (a timeout longer than the interval, no status) is the
//! data plane's rule ([`HealthCheck::check`], through [`crate::proxy::check_upstreams`]), which
//! the config reports at the line of the field like every upstream mistake.

use super::file::{HealthFile, PassiveFile};
use super::{duration, ConfigError};
use crate::proxy::{HealthCheck, PassiveHealth};

/// `health` of the upstream at `prefix` (`upstreams[0]`), defaults filled in; `None` when the
/// upstream has none.
pub(super) fn health_check(
    prefix: &str,
    file: Option<&HealthFile>,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<HealthCheck>, ConfigError> {
    let Some(f) = file else { return Ok(None) };
    let defaults = HealthCheck::default();
    let field = |name: &str| format!("{prefix}.health.{name}");
    Ok(Some(HealthCheck {
        path: f.path.clone().unwrap_or(defaults.path),
        interval: duration(&field("interval"), &f.interval, defaults.interval, at)?,
        timeout: duration(&field("timeout"), &f.timeout, defaults.timeout, at)?,
        healthy: f.healthy.unwrap_or(defaults.healthy),
        unhealthy: f.unhealthy.unwrap_or(defaults.unhealthy),
        statuses: f.statuses.clone().unwrap_or(defaults.statuses),
        host: f.host.clone(),
    }))
}

/// `passive` of the upstream at `prefix`, defaults filled in (the defaults when absent).
pub(super) fn passive_health(
    prefix: &str,
    file: Option<&PassiveFile>,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<PassiveHealth, ConfigError> {
    let defaults = PassiveHealth::default();
    let Some(f) = file else { return Ok(defaults) };
    let field = |name: &str| format!("{prefix}.passive.{name}");
    Ok(PassiveHealth {
        failures: f.failures.unwrap_or(defaults.failures),
        ejection: duration(&field("ejection"), &f.ejection, defaults.ejection, at)?,
        max_ejection: duration(
            &field("max_ejection"),
            &f.max_ejection,
            defaults.max_ejection,
            at,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::proxy::{HealthCheck, PassiveHealth};
    use std::path::Path;
    use std::time::Duration;

    /// A config with one upstream carrying `extra` (inline keys after `servers`).
    fn config(extra: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "listen = [\"127.0.0.1:8080\"]\n\n[[upstreams]]\nname = \"canary\"\nservers = [\"h:1\", \"h:2\"]\n{extra}"
        );
        parse(&text, Path::new("g.toml"))
    }

    fn error(extra: &str) -> String {
        config(extra).expect_err("invalid").to_string()
    }

    #[test]
    fn no_health_is_no_active_checks_and_passive_on_with_its_defaults() {
        let c = config("").unwrap();
        assert_eq!(c.upstreams[0].health, None);
        assert_eq!(c.upstreams[0].passive, PassiveHealth::default());
        assert_eq!(
            PassiveHealth::default(),
            PassiveHealth {
                failures: 5,
                ejection: Duration::from_secs(10),
                max_ejection: Duration::from_secs(300),
            }
        );
    }

    #[test]
    fn an_empty_health_table_is_every_default() {
        let c = config("health = {}\n").unwrap();
        assert_eq!(c.upstreams[0].health, Some(HealthCheck::default()));
        assert_eq!(
            HealthCheck::default(),
            HealthCheck {
                path: "/healthz".into(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                healthy: 2,
                unhealthy: 3,
                statuses: vec![200],
                host: None,
            }
        );
    }

    #[test]
    fn every_setting_is_read() {
        let c = config(
            "health = { path = \"/up\", interval = \"5s\", timeout = \"300ms\", healthy = 1, \
             unhealthy = 4, statuses = [200, 204], host = \"app.internal\" }\n\
             passive = { failures = 0, ejection = \"1s\", max_ejection = \"1m\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.upstreams[0].health,
            Some(HealthCheck {
                path: "/up".into(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_millis(300),
                healthy: 1,
                unhealthy: 4,
                statuses: vec![200, 204],
                host: Some("app.internal".into()),
            })
        );
        assert_eq!(
            c.upstreams[0].passive,
            PassiveHealth {
                failures: 0,
                ejection: Duration::from_secs(1),
                max_ejection: Duration::from_secs(60),
            }
        );
    }

    /// Each mistake names the file, the line, the field and what is wrong.
    #[test]
    fn mistakes_name_their_line_and_field() {
        let cases = [
            (
                "health = { interval = \"soon\" }\n",
                "g.toml:6:12: upstreams[0].health.interval: `soon` is not a duration like \"2s\" or \"300ms\": expected number at 0",
            ),
            (
                "health = { timeout = \"0s\" }\n",
                "g.toml:6:12: upstreams[0].health.timeout: must be longer than zero",
            ),
            (
                "health = { interval = \"1s\", timeout = \"2s\" }\n",
                "g.toml:6:29: upstreams[0].health.timeout: 2s is longer than the interval (1s): a check must end before the next one starts",
            ),
            (
                "health = { path = \"healthz\" }\n",
                "g.toml:6:12: upstreams[0].health.path: `healthz` is not a path: write it as requested, starting with `/`",
            ),
            (
                "health = { healthy = 0 }\n",
                "g.toml:6:12: upstreams[0].health.healthy: must be at least 1",
            ),
            (
                "health = { unhealthy = 0 }\n",
                "g.toml:6:12: upstreams[0].health.unhealthy: must be at least 1",
            ),
            (
                "health = { statuses = [] }\n",
                "g.toml:6:12: upstreams[0].health.statuses: needs at least one status, like [200]",
            ),
            (
                "health = { statuses = [200, 99] }\n",
                "g.toml:6:29: upstreams[0].health.statuses[1]: `99` is not an HTTP status (100 to 599)",
            ),
            (
                "health = { host = \"a\\nb\" }\n",
                "g.toml:6:12: upstreams[0].health.host: `a\nb` cannot be a Host header",
            ),
            (
                "passive = { ejection = \"1m\", max_ejection = \"10s\" }\n",
                "g.toml:6:30: upstreams[0].passive.max_ejection: 10s is shorter than `ejection` (1m)",
            ),
            (
                "passive = { ejection = \"never\" }\n",
                "g.toml:6:13: upstreams[0].passive.ejection: `never` is not a duration like \"2s\" or \"300ms\": expected number at 0",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(error(extra), message, "{extra}");
        }
        // Unknown keys and wrong types come from the parser, with their place.
        let unknown = error("health = { intervall = \"1s\" }\n");
        assert!(
            unknown.starts_with("g.toml:6:12: ") && unknown.contains("unknown field `intervall`"),
            "{unknown}"
        );
        let negative = error("passive = { failures = -1 }\n");
        assert!(negative.starts_with("g.toml:6:"), "{negative}");
    }
}
