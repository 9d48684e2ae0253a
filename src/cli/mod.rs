//! `graygate ctl`: the admin API from a shell, one subcommand per endpoint.
//!
//! The address and token come from `--addr`/`GRAYGATE_ADMIN` (default `http://127.0.0.1:9901`) and
//! `--token`/`GRAYGATE_TOKEN`. Answers are printed as aligned tables or one-line summaries, or as
//! the API's JSON with `--json`. A refusal is printed to stderr as the API wrote it (with
//! `--json`, the API's error JSON).
//!
//! Exit codes, for scripts:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the API refused (4xx): bad input, not found, stale revision, not authorized |
//! | 2 | usage error (arguments, an unreadable file) |
//! | 3 | the API cannot be reached, or failed (5xx) |
//!
//! Documents (`routes put`, `rules add`, `policy put`, ...) are read from a file (JSON, or TOML
//! for a `.toml` file), from `-` (stdin), or given inline as JSON (an argument starting with `{`).

mod client;
mod output;

use client::{segment, Api};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::Read;
use std::process::ExitCode;

/// Why a ctl command failed; each kind has its exit code.
#[derive(Debug)]
pub enum CtlError {
    /// Wrong arguments or an unreadable input: exit 2.
    Usage(String),
    /// The API refused (4xx): exit 1.
    Refused {
        status: StatusCode,
        message: String,
        body: Value,
    },
    /// The API failed (5xx): exit 3.
    Server {
        status: StatusCode,
        message: String,
        body: Value,
    },
    /// The API cannot be reached: exit 3.
    Unreachable(String),
}

impl CtlError {
    fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. } => 1,
            CtlError::Usage(_) => 2,
            CtlError::Server { .. } | CtlError::Unreachable(_) => 3,
        }
    }
}

/// `graygate ctl` and its options.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Address of the admin API.
    #[arg(
        long,
        env = "GRAYGATE_ADMIN",
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    addr: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "GRAYGATE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Change the policy only if it is still at this revision (sent as If-Match); else exit 1.
    #[arg(long, global = true, value_name = "N")]
    revision: Option<u64>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Revision, store health, and per service: versions, split, rules and live traffic.
    Status,
    /// The whole policy document.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Routes (host and path prefix -> service).
    Routes {
        #[command(subcommand)]
        cmd: DocCmd,
    },
    /// Services (stable version, versions, rules, split).
    Services {
        #[command(subcommand)]
        cmd: DocCmd,
    },
    /// Versions of a service (version -> upstream).
    Versions {
        #[command(subcommand)]
        cmd: VersionsCmd,
    },
    /// Rules of a service, in the order they are tried.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// The weighted split of a service.
    Weights {
        #[command(subcommand)]
        cmd: WeightsCmd,
    },
    /// Gray list entries (identities, IPs) in the store.
    List {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Which version a described request would reach, and why (no traffic is sent).
    Explain(ExplainArgs),
    /// Make a version the stable one at once: rules and split cleared, the old stable kept as
    /// the rollback target.
    Promote {
        #[arg(long, short)]
        service: String,
        /// Default: the canary (the only other version, or the only one with a weight).
        #[arg(long, short)]
        version: Option<String>,
    },
    /// Everyone back to stable at once: weights to 0 (and the last promote undone if no new
    /// canary started since).
    Rollback {
        #[arg(long, short)]
        service: String,
        /// Also delete the service's rules.
        #[arg(long)]
        clear_rules: bool,
    },
    /// Every change: revision, time, who, what.
    History {
        #[arg(long, short, default_value_t = 20)]
        limit: usize,
    },
    /// Make the policy of an earlier revision current again (as a new revision).
    Undo {
        /// The revision to go back to (see `history`).
        to: u64,
    },
}

#[derive(clap::Subcommand, Debug)]
enum PolicyCmd {
    /// Print the policy (JSON); its revision goes to stderr.
    Get,
    /// Replace the whole policy.
    Put {
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        file: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum DocCmd {
    List,
    Get {
        name: String,
    },
    /// Create or replace (by the name in the document, or --name).
    Put {
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        file: String,
        #[arg(long)]
        name: Option<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum VersionsCmd {
    List {
        #[arg(long, short)]
        service: String,
    },
    /// Create or change a version: which upstream serves it.
    Set {
        #[arg(long, short)]
        service: String,
        version: String,
        upstream: String,
    },
    Delete {
        #[arg(long, short)]
        service: String,
        version: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum RulesCmd {
    List {
        #[arg(long, short)]
        service: String,
    },
    Get {
        #[arg(long, short)]
        service: String,
        name: String,
    },
    /// Add a rule (last, or at --position; 0 is first).
    Add {
        #[arg(long, short)]
        service: String,
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        rule: String,
        #[arg(long)]
        position: Option<usize>,
    },
    Replace {
        #[arg(long, short)]
        service: String,
        name: String,
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        rule: String,
    },
    Delete {
        #[arg(long, short)]
        service: String,
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum WeightsCmd {
    Get {
        #[arg(long, short)]
        service: String,
    },
    /// Set the split: `canary=10` sends 10% to canary, the rest to stable.
    Set {
        #[arg(long, short)]
        service: String,
        /// VERSION=PERCENT, one or more.
        #[arg(required = true)]
        weights: Vec<String>,
        /// What makes the split sticky: header:NAME, cookie:NAME, query:NAME or client_ip.
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        salt: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum ListCmd {
    /// Add or replace entries (keys from arguments and/or --file).
    Add {
        list: String,
        keys: Vec<String>,
        /// One key per line (`-` for stdin); blank lines and `#` comments are skipped.
        #[arg(long)]
        file: Option<String>,
        #[arg(long, default_value = "1")]
        value: String,
        /// How long the entries live, like 1h or 30m (default: until removed).
        #[arg(long)]
        ttl: Option<String>,
    },
    Remove {
        list: String,
        keys: Vec<String>,
        #[arg(long)]
        file: Option<String>,
    },
    /// Every live entry (not with memcached, which cannot enumerate keys).
    Show {
        list: String,
    },
    Count {
        list: String,
    },
}

#[derive(clap::Args, Debug)]
struct ExplainArgs {
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long)]
    host: Option<String>,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long)]
    query: Option<String>,
    /// NAME:VALUE, repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// NAME=VALUE, repeatable.
    #[arg(long = "cookie")]
    cookies: Vec<String>,
    /// The client IP, as it is.
    #[arg(long)]
    ip: Option<String>,
    /// Instead of --ip: the connecting address; the client IP is resolved with the trusted
    /// proxies and the forwarding headers, as for a real request.
    #[arg(long)]
    peer: Option<String>,
}

/// Runs `graygate ctl` and returns its exit code.
pub fn run(args: CtlArgs) -> ExitCode {
    let json_mode = args.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("graygate ctl: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                CtlError::Refused { message, body, .. }
                | CtlError::Server { message, body, .. } => {
                    if json_mode && !body.is_string() {
                        eprintln!("{body}");
                    } else {
                        eprintln!("{message}");
                    }
                }
                CtlError::Usage(m) => eprintln!("graygate ctl: {m}"),
                CtlError::Unreachable(m) => {
                    eprintln!("graygate ctl: cannot reach the admin API at {m}")
                }
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Reads a document argument: inline JSON, `-` (stdin), or a file (TOML if it ends in `.toml`).
fn read_doc(arg: &str) -> Result<Vec<u8>, CtlError> {
    if arg.trim_start().starts_with('{') {
        return Ok(arg.as_bytes().to_vec());
    }
    let text = read_text(arg)?;
    if arg.ends_with(".toml") {
        let value: toml::Value = toml::from_str(&text)
            .map_err(|e| CtlError::Usage(format!("{arg}: not valid TOML: {e}")))?;
        return serde_json::to_vec(&value).map_err(|e| CtlError::Usage(format!("{arg}: {e}")));
    }
    Ok(text.into_bytes())
}

fn read_text(arg: &str) -> Result<String, CtlError> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Usage(format!("cannot read stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(arg).map_err(|e| CtlError::Usage(format!("cannot read {arg}: {e}")))
}

/// Keys from arguments, then from `file` (one per line, `#` comments and blank lines skipped).
fn keys(mut keys: Vec<String>, file: Option<&str>) -> Result<Vec<String>, CtlError> {
    if let Some(file) = file {
        let text = read_text(file)?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if keys.is_empty() {
        return Err(CtlError::Usage(
            "no keys: give them as arguments or with --file".to_string(),
        ));
    }
    Ok(keys)
}

/// `header:X-User-Id` -> `{"header": "X-User-Id"}`.
fn identity(by: &str) -> Result<Value, CtlError> {
    if by == "client_ip" {
        return Ok(json!({ "client_ip": true }));
    }
    match by.split_once(':') {
        Some((kind @ ("header" | "cookie" | "query"), name)) if !name.is_empty() => {
            Ok(json!({ kind: name }))
        }
        _ => Err(CtlError::Usage(format!(
            "--by {by}: write header:NAME, cookie:NAME, query:NAME or client_ip"
        ))),
    }
}

/// `canary=10` -> ("canary", 10.0).
fn weight(text: &str) -> Result<(String, f64), CtlError> {
    let bad = || CtlError::Usage(format!("`{text}`: write VERSION=PERCENT, like canary=10"));
    let (version, pct) = text.split_once('=').ok_or_else(bad)?;
    let pct = pct
        .trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| bad())?;
    if version.is_empty() {
        return Err(bad());
    }
    Ok((version.to_string(), pct))
}

fn pair<'a>(text: &'a str, sep: char, what: &str) -> Result<(&'a str, &'a str), CtlError> {
    text.split_once(sep)
        .map(|(k, v)| (k.trim(), v.trim_start()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CtlError::Usage(format!("`{text}`: write {what}")))
}

async fn execute(args: CtlArgs) -> Result<(), CtlError> {
    let api = Api::new(&args.addr, args.token.clone())?;
    let rev = args.revision;
    let out = output::Printer { json: args.json };
    match args.command {
        Cmd::Status => {
            let v = api.call(Method::GET, "/v1/status", None, None).await?;
            out.status(&v);
        }
        Cmd::Policy { cmd } => match cmd {
            PolicyCmd::Get => {
                let v = api.call(Method::GET, "/v1/policy", None, None).await?;
                out.pretty(&v);
            }
            PolicyCmd::Put { file } => {
                let body = read_doc(&file)?;
                let v = api.call(Method::PUT, "/v1/policy", rev, Some(body)).await?;
                out.done(&v, "policy replaced");
            }
        },
        Cmd::Routes { cmd } => docs(&api, &out, rev, "routes", "route", cmd).await?,
        Cmd::Services { cmd } => docs(&api, &out, rev, "services", "service", cmd).await?,
        Cmd::Versions { cmd } => match cmd {
            VersionsCmd::List { service } => {
                let path = format!("/v1/services/{}/versions", segment(&service));
                let v = api.call(Method::GET, &path, None, None).await?;
                out.versions(&v);
            }
            VersionsCmd::Set {
                service,
                version,
                upstream,
            } => {
                let path = format!(
                    "/v1/services/{}/versions/{}",
                    segment(&service),
                    segment(&version)
                );
                let body = serde_json::to_vec(&json!({ "upstream": upstream })).expect("json");
                let v = api.call(Method::PUT, &path, rev, Some(body)).await?;
                out.done(
                    &v,
                    &format!("{service}: version {version} -> upstream {upstream}"),
                );
            }
            VersionsCmd::Delete { service, version } => {
                let path = format!(
                    "/v1/services/{}/versions/{}",
                    segment(&service),
                    segment(&version)
                );
                let v = api.call(Method::DELETE, &path, rev, None).await?;
                out.done(&v, &format!("{service}: version {version} deleted"));
            }
        },
        Cmd::Rules { cmd } => match cmd {
            RulesCmd::List { service } => {
                let path = format!("/v1/services/{}/rules", segment(&service));
                let v = api.call(Method::GET, &path, None, None).await?;
                out.rules(&v);
            }
            RulesCmd::Get { service, name } => {
                let path = format!(
                    "/v1/services/{}/rules/{}",
                    segment(&service),
                    segment(&name)
                );
                let v = api.call(Method::GET, &path, None, None).await?;
                out.pretty(&v);
            }
            RulesCmd::Add {
                service,
                rule,
                position,
            } => {
                let mut path = format!("/v1/services/{}/rules", segment(&service));
                if let Some(p) = position {
                    path.push_str(&format!("?position={p}"));
                }
                let v = api
                    .call(Method::POST, &path, rev, Some(read_doc(&rule)?))
                    .await?;
                let name = v
                    .pointer("/rule/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                out.done(&v, &format!("{service}: rule {name} added"));
            }
            RulesCmd::Replace {
                service,
                name,
                rule,
            } => {
                let path = format!(
                    "/v1/services/{}/rules/{}",
                    segment(&service),
                    segment(&name)
                );
                let v = api
                    .call(Method::PUT, &path, rev, Some(read_doc(&rule)?))
                    .await?;
                out.done(&v, &format!("{service}: rule {name} replaced"));
            }
            RulesCmd::Delete { service, name } => {
                let path = format!(
                    "/v1/services/{}/rules/{}",
                    segment(&service),
                    segment(&name)
                );
                let v = api.call(Method::DELETE, &path, rev, None).await?;
                out.done(&v, &format!("{service}: rule {name} deleted"));
            }
        },
        Cmd::Weights { cmd } => match cmd {
            WeightsCmd::Get { service } => {
                let path = format!("/v1/services/{}/weights", segment(&service));
                let v = api.call(Method::GET, &path, None, None).await?;
                out.weights(&v);
            }
            WeightsCmd::Set {
                service,
                weights,
                by,
                salt,
            } => {
                let mut map = serde_json::Map::new();
                for w in &weights {
                    let (version, pct) = weight(w)?;
                    map.insert(version, json!(pct));
                }
                let mut body = json!({ "weights": map });
                if let Some(by) = by {
                    body["by"] = identity(&by)?;
                }
                if let Some(salt) = salt {
                    body["salt"] = json!(salt);
                }
                let path = format!("/v1/services/{}/weights", segment(&service));
                let body = serde_json::to_vec(&body).expect("json");
                let v = api.call(Method::PUT, &path, rev, Some(body)).await?;
                out.weights(&v);
            }
        },
        Cmd::List { cmd } => match cmd {
            ListCmd::Add {
                list,
                keys: k,
                file,
                value,
                ttl,
            } => {
                let entries: Vec<Value> = keys(k, file.as_deref())?
                    .into_iter()
                    .map(|key| {
                        let mut e = json!({ "key": key, "value": value });
                        if let Some(ttl) = &ttl {
                            e["ttl"] = json!(ttl);
                        }
                        e
                    })
                    .collect();
                let path = format!("/v1/lists/{}/entries", segment(&list));
                let body = serde_json::to_vec(&json!({ "entries": entries })).expect("json");
                let v = api.call(Method::POST, &path, None, Some(body)).await?;
                let n = v.get("written").and_then(Value::as_u64).unwrap_or(0);
                out.plain(&v, &format!("list {list}: {n} entries written"));
            }
            ListCmd::Remove {
                list,
                keys: k,
                file,
            } => {
                let keys = keys(k, file.as_deref())?;
                let asked = keys.len();
                let path = format!("/v1/lists/{}/entries", segment(&list));
                let body = serde_json::to_vec(&json!({ "keys": keys })).expect("json");
                let v = api.call(Method::DELETE, &path, None, Some(body)).await?;
                let n = v.get("removed").and_then(Value::as_u64).unwrap_or(0);
                out.plain(&v, &format!("list {list}: {n} of {asked} entries removed"));
            }
            ListCmd::Show { list } => {
                let path = format!("/v1/lists/{}/entries", segment(&list));
                let v = api.call(Method::GET, &path, None, None).await?;
                out.entries(&v);
            }
            ListCmd::Count { list } => {
                let path = format!("/v1/lists/{}/count", segment(&list));
                let v = api.call(Method::GET, &path, None, None).await?;
                let n = v.get("count").and_then(Value::as_u64).unwrap_or(0);
                out.plain(&v, &n.to_string());
            }
        },
        Cmd::Explain(e) => {
            let mut headers = serde_json::Map::new();
            for h in &e.headers {
                let (k, v) = pair(h, ':', "NAME:VALUE")?;
                headers.insert(k.to_string(), json!(v));
            }
            let mut cookies = serde_json::Map::new();
            for c in &e.cookies {
                let (k, v) = pair(c, '=', "NAME=VALUE")?;
                cookies.insert(k.to_string(), json!(v));
            }
            let mut body = json!({
                "method": e.method, "path": e.path, "headers": headers, "cookies": cookies,
            });
            for (key, value) in [
                ("host", &e.host),
                ("query", &e.query),
                ("client_ip", &e.ip),
                ("peer", &e.peer),
            ] {
                if let Some(value) = value {
                    body[key] = json!(value);
                }
            }
            let body = serde_json::to_vec(&body).expect("json");
            let v = api
                .call(Method::POST, "/v1/explain", None, Some(body))
                .await?;
            out.explain(&v);
        }
        Cmd::Promote { service, version } => {
            let path = format!("/v1/services/{}/promote", segment(&service));
            let body = serde_json::to_vec(&json!({ "version": version })).expect("json");
            let v = api.call(Method::POST, &path, rev, Some(body)).await?;
            let stable = v.get("stable").and_then(Value::as_str).unwrap_or("?");
            let old = v
                .get("previous_stable")
                .and_then(Value::as_str)
                .unwrap_or("?");
            out.done(
                &v,
                &format!(
                    "{service}: {stable} is stable, everyone goes there (rollback target: {old})"
                ),
            );
        }
        Cmd::Rollback {
            service,
            clear_rules,
        } => {
            let path = format!("/v1/services/{}/rollback", segment(&service));
            let body = serde_json::to_vec(&json!({ "clear_rules": clear_rules })).expect("json");
            let v = api.call(Method::POST, &path, rev, Some(body)).await?;
            let stable = v.get("stable").and_then(Value::as_str).unwrap_or("?");
            let mut text =
                format!("{service}: weights 0, everyone not matched by a rule on {stable}");
            if let Some(demoted) = v.get("demoted").and_then(Value::as_str) {
                text = format!("{service}: promote of {demoted} undone, everyone on {stable}");
            }
            let cleared = v.get("rules_cleared").and_then(Value::as_u64).unwrap_or(0);
            if cleared > 0 {
                text.push_str(&format!(" ({cleared} rules cleared)"));
            }
            out.done(&v, &text);
        }
        Cmd::History { limit } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/v1/history?limit={limit}"),
                    None,
                    None,
                )
                .await?;
            out.history(&v);
        }
        Cmd::Undo { to } => {
            let body = serde_json::to_vec(&json!({ "revision": to })).expect("json");
            let v = api.call(Method::POST, "/v1/undo", rev, Some(body)).await?;
            out.done(&v, &format!("policy of revision {to} restored"));
        }
    }
    Ok(())
}

/// `routes` and `services`: list, get, put, delete.
async fn docs(
    api: &Api,
    out: &output::Printer,
    rev: Option<u64>,
    collection: &str,
    what: &str,
    cmd: DocCmd,
) -> Result<(), CtlError> {
    match cmd {
        DocCmd::List => {
            let v = api
                .call(Method::GET, &format!("/v1/{collection}"), None, None)
                .await?;
            if collection == "routes" {
                out.routes(&v);
            } else {
                out.services(&v);
            }
        }
        DocCmd::Get { name } => {
            let path = format!("/v1/{collection}/{}", segment(&name));
            let v = api.call(Method::GET, &path, None, None).await?;
            out.pretty(&v);
        }
        DocCmd::Put { file, name } => {
            let body = read_doc(&file)?;
            let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let name = name
                .or_else(|| doc.get("name").and_then(Value::as_str).map(str::to_string))
                .or_else(|| {
                    doc.get("service")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .ok_or_else(|| {
                    CtlError::Usage(format!("the {what} names no `name`: give --name"))
                })?;
            let path = format!("/v1/{collection}/{}", segment(&name));
            let v = api.call(Method::PUT, &path, rev, Some(body)).await?;
            let verb = if v.get("created").and_then(Value::as_bool) == Some(true) {
                "created"
            } else {
                "replaced"
            };
            out.done(&v, &format!("{what} {name} {verb}"));
        }
        DocCmd::Delete { name } => {
            let path = format!("/v1/{collection}/{}", segment(&name));
            let v = api.call(Method::DELETE, &path, rev, None).await?;
            out.done(&v, &format!("{what} {name} deleted"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_forms() {
        assert_eq!(weight("canary=10").unwrap(), ("canary".to_string(), 10.0));
        assert_eq!(
            weight("canary=12.5%").unwrap(),
            ("canary".to_string(), 12.5)
        );
        assert!(weight("canary").is_err());
        assert_eq!(
            identity("header:X-User-Id").unwrap(),
            json!({"header": "X-User-Id"})
        );
        assert_eq!(identity("client_ip").unwrap(), json!({"client_ip": true}));
        assert!(identity("ip").is_err());
        assert_eq!(pair("X-A: b c", ':', "").unwrap(), ("X-A", "b c"));
        assert_eq!(read_doc("{\"a\":1}").unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CtlError::Usage(String::new()).exit_code(), 2);
        assert_eq!(CtlError::Unreachable(String::new()).exit_code(), 3);
        let refused = CtlError::Refused {
            status: StatusCode::CONFLICT,
            message: String::new(),
            body: Value::Null,
        };
        assert_eq!(refused.exit_code(), 1);
    }
}
