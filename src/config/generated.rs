//! The config and policy file readers on generated bad input: a complete, valid config (every
//! table, an inline policy with every kind of condition) and a policy file, each taken apart by
//! [`crate::mutate`], and random text.
//!
//! What must hold for any input: no panic; an answer that is a config or a [`ConfigError`] whose
//! every problem names this file and a line and column that exist in it (the promise of the
//! module: errors point at `file:line`).

use super::*;
use crate::mutate::{assert_reaches, bounded, mutated_text, random_text, sample};
use proptest::prelude::*;

/// A config that uses every table the reader knows, with values near their limits.
const VALID: &str = r#"listen = ["127.0.0.1:8080", "[::1]:8080"]
reload_interval = "5s"
version_header = "X-Gray-Version"
response_version_header = true
workers = 2
max_header_bytes = 16384

[store]
kind = "memcached"
servers = ["127.0.0.1:11211", "cache.internal:11211"]
lists = { gray_ips = "", users = "uid:" }
path = "graygate-data"

[cache]
max_entries = 100000
ttl = "1s"
negative_ttl = "500ms"
lookup_timeout = "50ms"

[client_ip]
trusted_proxies = ["127.0.0.0/8", "::1", "10.0.0.0/8"]
mode = "forwarded"
strip_untrusted_forwarded = false

[timeouts]
connect = "1s"
header = "10s"
upstream_response = "30s"
idle = "60s"
client_body = "30s"
upstream_body = "30s"
shutdown = "10s"

[[upstreams]]
name = "prod"
servers = ["127.0.0.1:18080 weight=3", "127.0.0.1:18081 weight=1"]
health = { path = "/healthz", interval = "2s", timeout = "1s", healthy = 2, unhealthy = 3, statuses = [200, 204], host = "example.com" }
passive = { failures = 5, ejection = "10s", max_ejection = "5m" }

[[upstreams]]
name = "canary"
servers = ["127.0.0.1:19090"]
protocol = "h2c"

[metrics]
listen = "127.0.0.1:9091"

[access_log]
format = "json"

[log]
format = "text"

[admin]
listen = "127.0.0.1:9092"
tokens = [{ name = "alice", token = "alice-token-0123456789" }, { name = "ci", token_env = "GRAYGATE_CI_TOKEN" }]

[rollouts]
tick = "1s"
lease = "10s"

[http2]
max_concurrent_streams = 100

[policy]
[[policy.routes]]
name = "api"
hosts = ["api.example.com", "*.example.org"]
path_prefix = "/api"
service = "client"

[[policy.routes]]
service = "client"

[[policy.services]]
name = "client"
stable = "prod"
versions = { prod = "prod", canary = "canary" }
override = { header = "X-Gray", version = "canary" }

[[policy.services.rules]]
name = "gray-ips"
version = "canary"
when = { client_ip = true, lookup = { list = "gray_ips" }, equals = "1" }

[[policy.services.rules]]
name = "office"
version = "canary"
when = { cidr = ["192.168.0.0/16", "2001:db8::/32"] }

[[policy.services.rules]]
name = "users"
version = "canary"
when = { any = [{ header = "X-Uid", range = { start = 1, end = 5000, exclusive = true } }, { cookie = "uid", ids = [7, -3, 9007199254740993] }, { query = "uid", suffix = ["00", "7"] }, { header = "X-Uid", modulo = { divisor = 10, remainders = [0, 9] } }] }

[[policy.services.rules]]
name = "ranged"
version = "canary"
when = { header = "X-Token", lookup = { list = "users", key = "token:{}" }, range_from = { list = "users", key = "Grayscale_Range", start = "idStart", end = "idEnd" } }

[[policy.services.rules]]
name = "beta"
version = "canary"
when = { all = [{ header = "User-Agent", regex = "^Mozilla/5\\.0 .*beta" }, { not = { header = "X-Env", in = ["prod", "staging"] } }, { header = "X-Id", percent = 12.5, salt = "beta" }, { cookie = "beta", present = true }] }

[policy.services.split]
weights = { canary = 2.5 }
by = { header = "X-User" }
salt = "client-2"
"#;

/// A policy file (`policy_file`): top-level `routes` and `services`.
const VALID_POLICY: &str = r#"[[routes]]
hosts = ["example.com"]
service = "web"

[[services]]
name = "web"
stable = "v1"
versions = { v1 = "prod", v2 = "canary" }

[[services.rules]]
name = "beta"
version = "v2"
when = { header = "X-Env", equals = "beta" }

[[services.rules]]
name = "ids"
version = "v2"
when = { header = "X-Uid", ids = [1, 2, 3] }

[services.split]
weights = { v2 = 10.0 }
"#;

const FILE: &str = "fuzz.toml";

/// Checks what any answer of the reader must be: a config, or errors each naming [`FILE`] and a
/// line and column inside `text`.
fn check_answer<T>(text: &str, answer: &Result<T, ConfigError>) -> Result<(), TestCaseError> {
    let Err(error) = answer else {
        return Ok(());
    };
    let lines = text.split('\n').count();
    for one in error.each() {
        match one {
            ConfigError::Invalid {
                file,
                line,
                column,
                message,
                ..
            } => {
                prop_assert_eq!(file, FILE);
                prop_assert!(
                    (1..=lines).contains(line),
                    "line {} of {} lines: {}",
                    line,
                    lines,
                    one
                );
                let width = text.split('\n').nth(line - 1).map_or(0, str::len);
                prop_assert!(
                    (1..=width + 1).contains(column),
                    "column {} of a line of {} bytes: {}",
                    column,
                    width,
                    one
                );
                prop_assert!(!message.trim().is_empty(), "no message: {}", one);
                let shown = one.to_string();
                let place = format!("{FILE}:{line}:{column}: ");
                prop_assert!(shown.starts_with(&place), "{}", shown);
            }
            ConfigError::Read { .. } | ConfigError::Several(_) => {
                prop_assert!(false, "not a problem of the text: {}", one)
            }
        }
    }
    Ok(())
}

fn read(text: &str) -> Result<Config, ConfigError> {
    // The token variables are not read: the answer must not depend on the environment.
    parse_with(text, Path::new(FILE), AdminSecrets::Skip)
}

#[test]
fn the_inputs_mutated_are_valid() {
    let config = read(VALID).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstreams.len(), 2);
    let policy = config.policy.expect("an inline policy");
    assert_eq!(policy.doc.services[0].rules.len(), 5);
    parse_policy(VALID_POLICY, Path::new(FILE), &["prod", "canary"])
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_mutations_reach_both_answers() {
    let texts = sample(mutated_text(VALID), 300);
    let read_ok = texts.iter().filter(|t| read(t).is_ok()).count();
    assert_reaches(300, &[("read", read_ok), ("refused", 300 - read_ok)]);
}

proptest! {
    #![proptest_config(bounded(256, 10_000))]

    #[test]
    fn a_mutated_config_is_read_or_refused_at_a_line_of_it(text in mutated_text(VALID)) {
        let answer = read(&text);
        check_answer(&text, &answer)?;
    }

    #[test]
    fn random_text_is_read_or_refused_at_a_line_of_it(text in random_text()) {
        let answer = read(&text);
        check_answer(&text, &answer)?;
    }

    #[test]
    fn a_mutated_policy_file_is_read_or_refused_at_a_line_of_it(text in mutated_text(VALID_POLICY)) {
        let answer = parse_policy(&text, Path::new(FILE), &["prod", "canary"]);
        check_answer(&text, &answer)?;
    }
}
