//! The `[admin]` table: where the control plane listens and who may use it.
//!
//! ```toml
//! [admin]
//! listen = "127.0.0.1:9901"          # absent table: no admin listener
//! max_connections = 64               # connections open at once; more wait in the backlog
//! header_timeout = "10s"             # a request's headers must arrive within this
//! session_ttl = "8h"                 # a dashboard sign-in lasts this long
//! tokens = [
//!   { name = "alice", token_env = "GRAYGATE_TOKEN_ALICE" },   # preferred: out of the file
//!   { name = "ci", token = "a-long-random-secret" },
//! ]
//! ```
//!
//! Without tokens the API is open to anyone who can connect, so it must listen on a loopback
//! address (checked here) and graygate warns at start.

use super::file::AdminFile;
use super::{AdminSecrets, ConfigError};
use crate::proxy::listen::DEFAULT_ADMIN_MAX_CONNECTIONS;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin API's listener and tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin API listens (default `127.0.0.1:9901`). Port 0 picks a free port; the
    /// bound address is printed at start.
    pub listen: SocketAddr,
    /// Bearer tokens; empty: no authentication, loopback only.
    pub tokens: Vec<AdminToken>,
    /// Connections open at once. Small and apart from the data plane's `max_connections`, so
    /// that clients of the admin API (slow, stuck or hostile) can never take the file
    /// descriptors traffic needs. Default 64.
    pub max_connections: usize,
    /// A request's headers must arrive within this, or the connection is closed (slowloris on
    /// the admin port). Also how long an idle kept-alive connection is kept. Default 10 s.
    pub header_timeout: Duration,
    /// How long a dashboard sign-in (a session cookie) lasts. Default 8 h: a working day.
    pub session_ttl: Duration,
}

/// Default of `[admin] session_ttl`: a working day, so that a dashboard left open over a release
/// does not sign itself out, and a forgotten one does not stay signed in for days.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Default of `[admin] header_timeout`, as the data plane's `timeouts.header`.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A bearer token and the name that changes made with it are recorded under.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Shown in the history and the log; never the secret.
    pub name: String,
    pub secret: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("secret", &"***")
            .finish()
    }
}

/// The default admin address: loopback, so that an `[admin]` table without `listen` never
/// exposes the API.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// Validates `[admin]`. `listen` is the traffic listeners', which the admin listener must not
/// take. Tokens named by `token_env` are read from the environment now (with
/// [`AdminSecrets::Read`]): every variable that is not set is reported, each at its line, so that
/// `graygate check` lists all of them at once rather than one per run.
pub(super) fn admin_config(
    file: &AdminFile,
    listen: &[SocketAddr],
    secrets: AdminSecrets,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<AdminConfig, ConfigError> {
    let text = file.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let addr = super::own_address(
        "admin.listen",
        text,
        9901,
        listen,
        "the admin API needs an address of its own",
        at,
    )?;

    let mut tokens = Vec::with_capacity(file.tokens.len());
    let mut unset = Vec::new();
    let mut names = HashSet::new();
    let mut taken = HashSet::new();
    for (i, t) in file.tokens.iter().enumerate() {
        let field = |key: &str| format!("admin.tokens[{i}].{key}");
        if t.name.trim().is_empty() {
            return Err(at(&field("name"), "a token needs a name".into()));
        }
        if !names.insert(t.name.as_str()) {
            return Err(at(
                &field("name"),
                format!("token name `{}` is used twice", t.name),
            ));
        }
        let (secret, key) = match (&t.token, &t.token_env) {
            (Some(token), None) => (token.clone(), "token"),
            (None, Some(_)) if secrets == AdminSecrets::Skip => continue,
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => (value, "token_env"),
                _ => {
                    unset.push(at(
                        &field("token_env"),
                        format!("environment variable {var} is not set (or empty)"),
                    ));
                    continue;
                }
            },
            _ => {
                return Err(at(
                    &format!("admin.tokens[{i}]"),
                    "needs exactly one of `token` or `token_env`".into(),
                ))
            }
        };
        if secret.len() < MIN_TOKEN_LEN || secret.trim() != secret {
            return Err(at(
                &field(key),
                format!(
                    "the token of `{}` must be at least {MIN_TOKEN_LEN} characters without surrounding spaces",
                    t.name
                ),
            ));
        }
        if !taken.insert(secret.clone()) {
            return Err(at(
                &field(key),
                format!("the token of `{}` is also another name's token", t.name),
            ));
        }
        tokens.push(AdminToken {
            name: t.name.clone(),
            secret,
        });
    }
    match unset.len() {
        0 => {}
        1 => return Err(unset.remove(0)),
        _ => return Err(ConfigError::Several(unset)),
    }
    // The tokens as written: with `Skip`, those from the environment are not in `tokens`.
    if file.tokens.is_empty() && !addr.ip().is_loopback() {
        return Err(at(
            "admin.listen",
            format!(
                "{addr} is not a loopback address: without `tokens` the admin API has no authentication, so it may only listen on 127.0.0.1 or [::1]"
            ),
        ));
    }
    let max_connections = super::connection_limit(
        "admin.max_connections",
        file.max_connections,
        DEFAULT_ADMIN_MAX_CONNECTIONS,
        at,
    )?;
    let header_timeout = super::duration(
        "admin.header_timeout",
        &file.header_timeout,
        DEFAULT_ADMIN_HEADER_TIMEOUT,
        at,
    )?;
    let session_ttl = super::duration(
        "admin.session_ttl",
        &file.session_ttl,
        DEFAULT_SESSION_TTL,
        at,
    )?;
    Ok(AdminConfig {
        listen: addr,
        tokens,
        max_connections,
        header_timeout,
        session_ttl,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, parse_with, AdminSecrets, ConfigError};
    use std::path::Path;

    fn config(admin: &str) -> Result<crate::config::Config, ConfigError> {
        parse(
            &format!("listen = [\"127.0.0.1:8080\"]\n{admin}"),
            Path::new("g.toml"),
        )
    }

    fn error(admin: &str) -> String {
        config(admin).unwrap_err().to_string()
    }

    #[test]
    fn absent_table_means_no_admin_listener() {
        assert_eq!(config("").unwrap().admin, None);
        let c = config("[admin]\n").unwrap().admin.unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9901");
        assert!(c.tokens.is_empty());
    }

    #[test]
    fn tokens_inline_and_from_the_environment() {
        std::env::set_var("GRAYGATE_TEST_ADMIN_TOKEN_ENV", "from-the-environment-0123");
        let c = config(
            "[admin]\nlisten = \"0.0.0.0:0\"\ntokens = [{ name = \"alice\", token_env = \"GRAYGATE_TEST_ADMIN_TOKEN_ENV\" }, { name = \"ci\", token = \"0123456789abcdef\" }]\n",
        )
        .unwrap()
        .admin
        .unwrap();
        assert_eq!(c.tokens[0].name, "alice");
        assert_eq!(c.tokens[0].secret, "from-the-environment-0123");
        assert_eq!(c.tokens[1].secret, "0123456789abcdef");
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "Debug hides secrets"
        );
    }

    /// `check` lists every variable that is not set, each at its line, and `import` (which does
    /// not serve the admin API) does not read them at all.
    #[test]
    fn unset_token_variables_are_each_reported_or_skipped() {
        let text = "listen = [\"127.0.0.1:8080\"]\n[admin]\nlisten = \"0.0.0.0:9901\"\ntokens = [\n  { name = \"a\", token_env = \"GRAYGATE_TEST_UNSET_A\" },\n  { name = \"b\", token = \"0123456789abcdef\" },\n  { name = \"c\", token_env = \"GRAYGATE_TEST_UNSET_C\" },\n]\n";
        let e = parse(text, Path::new("g.toml")).unwrap_err();
        let each: Vec<String> = e.each().iter().map(ToString::to_string).collect();
        assert_eq!(
            each,
            [
                "g.toml:5:17: admin.tokens[0].token_env: environment variable GRAYGATE_TEST_UNSET_A is not set (or empty)",
                "g.toml:7:17: admin.tokens[2].token_env: environment variable GRAYGATE_TEST_UNSET_C is not set (or empty)",
            ]
        );
        assert_eq!(e.to_string(), each.join("\n"));
        assert_eq!(e.field(), "admin.tokens[0].token_env");

        let skipped = parse_with(text, Path::new("g.toml"), AdminSecrets::Skip)
            .unwrap()
            .admin
            .unwrap();
        let names: Vec<&str> = skipped.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        // Only tokens from the environment: still a config with tokens, on any address.
        let only_env = "listen = [\"127.0.0.1:8080\"]\n[admin]\nlisten = \"0.0.0.0:9901\"\ntokens = [{ name = \"a\", token_env = \"GRAYGATE_TEST_UNSET_A\" }]\n";
        assert!(parse_with(only_env, Path::new("g.toml"), AdminSecrets::Skip).is_ok());
        // The other rules still hold.
        let bad = "listen = [\"127.0.0.1:8080\"]\n[admin]\ntokens = [{ name = \"a\", token = \"x\", token_env = \"V\" }]\n";
        assert!(parse_with(bad, Path::new("g.toml"), AdminSecrets::Skip)
            .unwrap_err()
            .to_string()
            .ends_with("needs exactly one of `token` or `token_env`"));
    }

    #[test]
    fn mistakes_name_their_line_and_field() {
        assert_eq!(
            error("[admin]\nlisten = \"0.0.0.0:9901\"\n"),
            "g.toml:3:1: admin.listen: 0.0.0.0:9901 is not a loopback address: without `tokens` the admin API has no authentication, so it may only listen on 127.0.0.1 or [::1]"
        );
        assert_eq!(
            error("[admin]\nlisten = \"nowhere\"\n"),
            "g.toml:3:1: admin.listen: `nowhere` is not an address like 127.0.0.1:9901 or [::1]:9901"
        );
        assert!(
            error("[admin]\nlisten = \"127.0.0.1:8080\"\n")
                .ends_with("admin.listen: 127.0.0.1:8080 is also in `listen`: the admin API needs an address of its own")
        );
        assert!(error("[admin]\ntokens = [{ name = \"a\", token = \"short\" }]\n")
            .ends_with("admin.tokens[0].token: the token of `a` must be at least 16 characters without surrounding spaces"));
        assert!(error("[admin]\ntokens = [{ name = \"a\" }]\n")
            .ends_with("admin.tokens[0]: needs exactly one of `token` or `token_env`"));
        assert!(error(
            "[admin]\ntokens = [{ name = \"a\", token_env = \"GRAYGATE_TEST_SURELY_UNSET\" }]\n"
        )
        .ends_with("admin.tokens[0].token_env: environment variable GRAYGATE_TEST_SURELY_UNSET is not set (or empty)"));
        assert!(error(
            "[admin]\ntokens = [{ name = \"a\", token = \"0123456789abcdef\" }, { name = \"a\", token = \"0123456789abcdeg\" }]\n"
        )
        .ends_with("admin.tokens[1].name: token name `a` is used twice"));
        assert!(
            error("[admin]\nlisten = \"127.0.0.1:1\"\nbind = 1\n").contains("unknown field `bind`")
        );
    }
}
