//! The command line of `graygate ctl`: every subcommand and option, each with its help, and the
//! small argument forms (`canary=10`, `header:X-User-Id`, `X-A: b`) read into wire types. An
//! argument that cannot be right is a usage error here, before anything is sent.

use super::CtlError;
use crate::policy::model::IdentityDoc;
use std::net::IpAddr;

/// `graygate ctl` and its options.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Address of the admin API (the `graygate: admin on http://...` line at start), not the
    /// traffic listener.
    #[arg(
        long,
        env = "GRAYGATE_ADMIN",
        // Without it clap prints `[env: GRAYGATE_ADMIN=]` when the variable is unset.
        hide_env_values = true,
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    pub addr: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "GRAYGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// For a change: make it only if the policy is still at this revision (sent as If-Match),
    /// else exit 1. Reads ignore it.
    #[arg(long, global = true, value_name = "N")]
    pub revision: Option<u64>,
    /// For a change: wait until every live instance sharing the store applied it, at most this
    /// long (`--wait` alone: 30s), then say which ones lag: exit 1 when some still do (the
    /// change was made). Reads ignore it.
    #[arg(
        long,
        global = true,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub wait: Option<std::time::Duration>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
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
    /// Upstreams: the table this instance runs (config file and shared policy, with the source
    /// of each), and the shared ones: define, delete, add or remove a server, drain, weight.
    Upstreams {
        #[command(subcommand)]
        cmd: UpstreamsCmd,
    },
    /// Gray list entries (identities, IPs) in the store.
    List {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Which version a described request would reach, and why (no traffic is sent).
    Explain(ExplainArgs),
    /// A tester override value that works until it expires (`always:<expiry>:<signature>`),
    /// signed with the service's override `key`: testers share it, and it stops working by
    /// itself. Printed on stdout.
    OverrideToken {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// How long it works: `1h`, `2d`.
        #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Make a version the stable one at once. Rules, the split's identity and salt and other
    /// weights stay; its own weight and the old stable are kept for a rollback.
    Promote {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// The version to promote. Default: the canary (the only other version, or the only one
        /// with a weight).
        #[arg(long, short)]
        version: Option<String>,
    },
    /// Undo the last promote exactly (if no new canary started since); otherwise stop the
    /// canary: weights to 0. Nothing left to undo: no change.
    Rollback {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// Also delete the service's rules.
        #[arg(long)]
        clear_rules: bool,
    },
    /// Rollouts: graygate carries a version from a few percent to 100% by itself, judging it
    /// against stable at every step.
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
    /// Every change: revision, time, who, what, newest first; with a revision, that change with
    /// the documents before and after it.
    History {
        /// Show this revision's change with its documents.
        revision: Option<u64>,
        /// How many changes (the API's pages are followed).
        #[arg(long, short, default_value_t = crate::api::HistoryQuery::DEFAULT_LIMIT, conflicts_with = "all")]
        limit: usize,
        /// Every change the history keeps.
        #[arg(long)]
        all: bool,
        /// Only changes older than this revision.
        #[arg(long)]
        before: Option<u64>,
    },
    /// Make the policy of an earlier revision current again (as a new revision).
    Undo {
        /// The revision to go back to (see `history`).
        to: u64,
    },
    /// Read the config file again, as SIGHUP does: upstreams, timeouts and the log format are
    /// applied; the config's policy only when it changed since it was last applied, and never
    /// over a rollout in progress. Exit 1 when a part was refused or failed.
    Reload {
        /// Apply the config's policy even if it did not change since it was last applied, and
        /// even over a rollout in progress (runtime changes are replaced by the file's policy).
        #[arg(long)]
        force: bool,
    },
    /// Every graygate instance sharing the store: its revision, the store as it sees it,
    /// whether it diverged, its snapshot. Marks diverged and lagging instances.
    Fleet {
        #[command(subcommand)]
        cmd: Option<FleetCmd>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum FleetCmd {
    /// The table of instances (the default).
    List,
    /// Write the policy this instance routes with back into a store that lost it (empty, or at
    /// an older revision), at its revision: the fix when `on_store_behind = "refuse"`.
    Restore,
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Print the policy (JSON); its revision goes to stderr.
    Get,
    /// Replace the whole policy.
    Put {
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        file: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum DocCmd {
    /// All of them, as a table.
    List,
    /// One of them, as JSON.
    Get {
        /// Its name.
        name: String,
    },
    /// Create or replace (by the name in the document, or --name).
    Put {
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        file: String,
        /// The name to put it under, instead of the one in the document.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete one.
    Delete {
        /// Its name.
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum VersionsCmd {
    /// The versions of a service and their upstreams.
    List {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// Create or change a version: which upstream serves it.
    Set {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// The version's name.
        version: String,
        /// The upstream (of the startup config) that serves it.
        upstream: String,
    },
    /// Delete a version (not the stable one).
    Delete {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// The version's name.
        version: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum RulesCmd {
    /// The rules of a service, in order.
    List {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// One rule, as JSON.
    Get {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// The rule's name.
        name: String,
    },
    /// Add a rule (last, or at --position; 0 is first).
    Add {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        rule: String,
        /// Where the rule goes: 0 is first. Default: last.
        #[arg(long)]
        position: Option<usize>,
    },
    /// Replace a rule in place (the new one may have another name).
    Replace {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// The name of the rule to replace.
        name: String,
        /// JSON or TOML file, `-` for stdin, or inline JSON.
        rule: String,
    },
    /// Delete a rule.
    Delete {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// The rule's name.
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum WeightsCmd {
    /// The split of a service.
    Get {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// Set the split: `canary=10` sends 10% to canary, the rest to stable.
    Set {
        /// The service.
        #[arg(long, short)]
        service: String,
        /// VERSION=PERCENT (0 to 100), one or more; versions left out get 0.
        #[arg(required = true)]
        weights: Vec<String>,
        /// What makes the split sticky: header:NAME, cookie:NAME, query:NAME or client_ip.
        #[arg(long)]
        by: Option<String>,
        /// Hash salt of the split (default: kept, or the service name).
        #[arg(long)]
        salt: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum UpstreamsCmd {
    /// Every upstream this instance runs: source (config or policy), servers, weights, drained,
    /// health.
    List,
    /// One upstream as this instance runs it, as JSON (with the policy's definition).
    Get {
        /// The upstream.
        name: String,
    },
    /// Define an upstream in the shared policy, or replace its definition: a policy upstream
    /// replaces the config file's upstream of the same name on every instance.
    Put {
        /// The upstream.
        name: String,
        /// JSON or TOML file, `-` for stdin, or inline JSON: `{"servers":[{"address":"10.0.0.5:8080"}]}`.
        file: String,
    },
    /// Delete an upstream from the shared policy (refused while a version uses it).
    Delete {
        /// The upstream.
        name: String,
    },
    /// Add a server to an upstream of the shared policy.
    AddServer {
        /// The upstream.
        name: String,
        /// `host:port` (or `https://host:port`).
        address: String,
        /// Its weight, 1 to 1000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Add it drained (no requests until `undrain`).
        #[arg(long)]
        drained: bool,
    },
    /// Remove a server from an upstream of the shared policy.
    RemoveServer {
        /// The upstream.
        name: String,
        /// Its `host:port`.
        address: String,
    },
    /// Drain a server: no new requests go to it; requests in flight finish.
    Drain {
        /// The upstream.
        name: String,
        /// Its `host:port`.
        address: String,
    },
    /// Undrain a server: it takes requests again, with its weight.
    Undrain {
        /// The upstream.
        name: String,
        /// Its `host:port`.
        address: String,
    },
    /// Change a server's weight (1 to 1000).
    Weight {
        /// The upstream.
        name: String,
        /// Its `host:port`.
        address: String,
        /// The new weight.
        weight: u32,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum RolloutCmd {
    /// Start a rollout: the canary's weight goes through the steps, each held and judged
    /// against stable, then the canary is promoted. Flags override the --plan file.
    Start(Box<StartArgs>),
    /// Where the rollout is: state, step, weight, the current window's figures, the verdicts.
    Status {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// Stop at the current step (the weight stays; a failure still aborts).
    Pause {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// Go on from a pause (a step that waits for resume moves to the next one).
    Resume {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// Promote the canary now, skipping the remaining steps (the post-promotion guard runs).
    Promote {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// Send everyone back to stable now: the canary's weight goes to 0.
    Abort {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
    /// Start an aborted rollout again from its first step.
    Retry {
        /// The service.
        #[arg(long, short)]
        service: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// The service.
    #[arg(long, short)]
    pub service: String,
    /// The version to roll out (required unless the --plan file names it).
    #[arg(long, short, required_unless_present = "plan")]
    pub version: Option<String>,
    /// The canary's weight at each step, in percent, ascending (default 5,25,50,100).
    #[arg(long, value_name = "PERCENTS")]
    pub steps: Option<String>,
    /// How long each step holds, like 5m (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub step_time: Option<String>,
    /// The shortest analysis window, like 1m (default 1m).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Requests of each version a window needs before a verdict (default 100).
    #[arg(long, value_name = "N")]
    pub min_requests: Option<u64>,
    /// How long a window waits for enough requests before the rollout pauses (default 15m).
    #[arg(long, value_name = "DURATION")]
    pub max_wait: Option<String>,
    /// Failing windows in a row that abort (default 2).
    #[arg(long, value_name = "N")]
    pub failure_limit: Option<u32>,
    /// How long the analysis goes on after the promote, like 5m; 0s turns it off (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub post_promotion: Option<String>,
    /// Record verdicts, never abort on them.
    #[arg(long)]
    pub dry_run: bool,
    /// The whole plan as a TOML or JSON file (the `[services.rollout]` table of a policy), `-`
    /// for stdin, or inline JSON.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<String>,
}

/// `5,25,50,100` -> the steps.
pub fn steps(text: &str) -> Result<Vec<crate::rollout::Step>, CtlError> {
    text.split(',')
        .map(|part| {
            let part = part.trim().trim_end_matches('%');
            match part.parse::<f64>() {
                Ok(w) if w > 0.0 && w <= 100.0 => Ok(crate::rollout::Step::weight(w)),
                _ => Err(CtlError::Usage(format!(
                    "--steps {text}: write percents above 0 and at most 100, like 5,25,50,100"
                ))),
            }
        })
        .collect()
}

/// `5m` -> 5 minutes, or a usage error naming the flag.
pub fn duration(flag: &str, text: &str) -> Result<std::time::Duration, CtlError> {
    humantime::parse_duration(text).map_err(|e| {
        CtlError::Usage(format!(
            "--{flag} {text}: not a duration like 30s or 5m ({e})"
        ))
    })
}

#[derive(clap::Subcommand, Debug)]
pub enum ListCmd {
    /// Add or replace entries (keys from arguments and/or --file).
    Add {
        /// The list (e.g. gray_ips).
        list: String,
        /// Keys to write.
        keys: Vec<String>,
        /// One key per line (`-` for stdin); blank lines and `#` comments are skipped.
        #[arg(long)]
        file: Option<String>,
        /// The value of every entry.
        #[arg(long, default_value = "1")]
        value: String,
        /// How long the entries live, like 1h or 30m (default: until removed).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Remove entries (keys from arguments and/or --file).
    Remove {
        /// The list.
        list: String,
        /// Keys to remove.
        keys: Vec<String>,
        /// One key per line (`-` for stdin); blank lines and `#` comments are skipped.
        #[arg(long)]
        file: Option<String>,
    },
    /// Every live entry (not with memcached, which cannot enumerate keys).
    Show {
        /// The list.
        list: String,
    },
    /// How many live entries a list holds (not with memcached).
    Count {
        /// The list.
        list: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The request's method (shown back; the policy does not route on it).
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The Host header (default none: only routes without hosts match).
    #[arg(long)]
    pub host: Option<String>,
    /// The path, with or without ?query.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The query string, without `?`.
    #[arg(long)]
    pub query: Option<String>,
    /// A header, NAME:VALUE; repeatable.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// A cookie, NAME=VALUE; repeatable.
    #[arg(long = "cookie")]
    pub cookies: Vec<String>,
    /// The client IP, as it is.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// Instead of --ip: the connecting address; the client IP is resolved with the trusted
    /// proxies and the forwarding headers, as for a real request.
    #[arg(long)]
    pub peer: Option<IpAddr>,
    /// The request comes over HTTPS.
    #[arg(long)]
    pub https: bool,
    /// The version an upstream graygate chose (its version header), for a service that
    /// follows it.
    #[arg(long)]
    pub followed: Option<String>,
}

/// Keys from arguments, then from `file` (one per line, `#` comments and blank lines skipped).
pub fn keys(mut keys: Vec<String>, file: Option<&str>) -> Result<Vec<String>, CtlError> {
    if let Some(file) = file {
        let text = super::doc::read_text(file)?;
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

/// `header:X-User-Id` -> the identity `{"header": "X-User-Id"}`.
pub fn identity(by: &str) -> Result<IdentityDoc, CtlError> {
    let name = |n: &str| Some(n.to_string());
    match by.split_once(':') {
        None if by == "client_ip" => Ok(IdentityDoc {
            client_ip: Some(true),
            ..IdentityDoc::default()
        }),
        Some(("header", n)) if !n.is_empty() => Ok(IdentityDoc {
            header: name(n),
            ..IdentityDoc::default()
        }),
        Some(("cookie", n)) if !n.is_empty() => Ok(IdentityDoc {
            cookie: name(n),
            ..IdentityDoc::default()
        }),
        Some(("query", n)) if !n.is_empty() => Ok(IdentityDoc {
            query: name(n),
            ..IdentityDoc::default()
        }),
        _ => Err(CtlError::Usage(format!(
            "--by {by}: write header:NAME, cookie:NAME, query:NAME or client_ip"
        ))),
    }
}

/// `canary=10` -> ("canary", 10.0). The percent is what the API accepts: a number from 0 to 100
/// (`nan`, `inf` and negative numbers parse as numbers, but no split can use them).
pub fn weight(text: &str) -> Result<(String, f64), CtlError> {
    let bad = || CtlError::Usage(format!("`{text}`: write VERSION=PERCENT, like canary=10"));
    let (version, pct) = text.split_once('=').ok_or_else(bad)?;
    let pct = pct
        .trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| bad())?;
    if version.is_empty() {
        return Err(bad());
    }
    if !(0.0..=100.0).contains(&pct) {
        return Err(CtlError::Usage(format!(
            "`{text}`: the weight of {version} must be a percentage from 0 to 100"
        )));
    }
    Ok((version.to_string(), pct))
}

/// `X-A: b` split at `sep` into a trimmed name and a value.
pub fn pair<'a>(text: &'a str, sep: char, what: &str) -> Result<(&'a str, &'a str), CtlError> {
    text.split_once(sep)
        .map(|(k, v)| (k.trim(), v.trim_start()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CtlError::Usage(format!("`{text}`: write {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};

    fn usage(e: CtlError) -> String {
        match e {
            CtlError::Usage(m) => m,
            other => panic!("not a usage error: {other:?}"),
        }
    }

    #[test]
    fn weights_are_percentages_the_api_accepts() {
        assert_eq!(weight("canary=10").unwrap(), ("canary".to_string(), 10.0));
        assert_eq!(
            weight("canary=12.5%").unwrap(),
            ("canary".to_string(), 12.5)
        );
        assert_eq!(weight("canary=0").unwrap().1, 0.0);
        assert_eq!(weight("canary=100").unwrap().1, 100.0);
        assert_eq!(
            usage(weight("canary").unwrap_err()),
            "`canary`: write VERSION=PERCENT, like canary=10"
        );
        assert_eq!(
            usage(weight("=5").unwrap_err()),
            "`=5`: write VERSION=PERCENT, like canary=10"
        );
        for text in [
            "canary=nan",
            "canary=NaN",
            "canary=inf",
            "canary=-inf",
            "canary=-1",
            "canary=100.5",
        ] {
            assert_eq!(
                usage(weight(text).unwrap_err()),
                format!("`{text}`: the weight of canary must be a percentage from 0 to 100")
            );
        }
    }

    #[test]
    fn identities_and_pairs() {
        assert_eq!(
            identity("header:X-User-Id").unwrap(),
            IdentityDoc {
                header: Some("X-User-Id".into()),
                ..IdentityDoc::default()
            }
        );
        assert_eq!(identity("client_ip").unwrap().client_ip, Some(true));
        assert_eq!(identity("query:uid").unwrap().query.as_deref(), Some("uid"));
        assert_eq!(
            usage(identity("ip").unwrap_err()),
            "--by ip: write header:NAME, cookie:NAME, query:NAME or client_ip"
        );
        assert!(identity("header:").is_err());
        assert_eq!(pair("X-A: b c", ':', "").unwrap(), ("X-A", "b c"));
        assert_eq!(
            usage(pair("novalue", '=', "NAME=VALUE").unwrap_err()),
            "`novalue`: write NAME=VALUE"
        );
        assert_eq!(
            usage(keys(Vec::new(), None).unwrap_err()),
            "no keys: give them as arguments or with --file"
        );
    }

    /// Every subcommand and every option of `graygate ctl`, with the path that reaches it, that
    /// has no help text.
    fn undocumented(cmd: &Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} <{id}>"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let here = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(here.clone());
            }
            undocumented(sub, &here, out);
        }
    }

    #[test]
    fn every_subcommand_and_option_has_help() {
        let mut cmd = CtlArgs::augment_args(Command::new("ctl"));
        cmd.build();
        let mut missing = Vec::new();
        undocumented(&cmd, "graygate ctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        // The walk sees the whole tree.
        let subcommands = cmd.get_subcommands().count();
        assert!(subcommands >= 14, "{subcommands}");
    }

    #[test]
    fn the_help_walk_finds_what_is_missing() {
        let cmd = Command::new("x")
            .arg(clap::Arg::new("quiet").long("quiet"))
            .subcommand(Command::new("bare"));
        let mut missing = Vec::new();
        undocumented(&cmd, "x", &mut missing);
        assert_eq!(missing, ["x <quiet>", "x bare"]);
    }
}
