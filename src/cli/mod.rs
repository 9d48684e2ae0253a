//! `graygate ctl`: the admin API from a shell, one subcommand per endpoint.
//!
//! The address and token come from `--addr`/`GRAYGATE_ADMIN` (default `http://127.0.0.1:9901`) and
//! `--token`/`GRAYGATE_TOKEN`. Answers are read into the wire types of [`crate::api`] and printed
//! as aligned tables or one-line summaries, or as the API's JSON with `--json`. A refusal is
//! printed to stderr as the API wrote it (with `--json`, the API's error JSON).
//!
//! ctl is honest about what it talks to: it only believes answers that carry the admin API's
//! header ([`crate::api::ADMIN_HEADER`]), so pointing it at the traffic port (where an
//! application answers) is exit 3 naming the address, not a success.
//!
//! Exit codes, for scripts:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (also when stdout was closed early, as by `| head -1`) |
//! | 1 | the API refused (4xx): bad input, not found, stale revision, not authorized; or a reload left a part out |
//! | 2 | usage error (arguments, an unreadable or invalid document, output that cannot be written) |
//! | 3 | the API cannot be reached, failed (5xx), or the address is not a graygate admin API |
//!
//! Documents (`routes put`, `rules add`, `policy put`, ...) are read from a file (JSON, or TOML
//! for a `.toml` file), from `-` (stdin), or given inline as JSON (an argument starting with `{`);
//! see `doc` for how their errors name the line.
//!
//! # Files
//! - `args`: the command line (every subcommand and option, with help) and argument forms.
//! - `client`: the HTTP client that checks every answer comes from the admin API.
//! - `doc`: documents read into the policy's types, errors at the user's line.
//! - `output`: tables and summaries from the wire types; writes that do not panic.

mod args;
mod client;
mod doc;
mod output;

pub use args::CtlArgs;

use crate::api::{
    paths, EntriesRemoved, EntriesWritten, EntryCount, EntryList, ErrorCode, Explain, Explanation,
    History, HistoryOne, HistoryQuery, IfMatch, NewEntries, NewEntry, PolicyReplaced, Promote,
    Promoted, ReloadOutcome, ReloadQuery, Reloaded, RemoveEntries, Revisioned, Rollback,
    RolledBack, RolloutView, RouteDeleted, RouteList, RoutePut, RuleDeleted, RuleList, RuleQuery,
    RuleWritten, ServiceDeleted, ServiceList, ServicePut, SetVersion, SetWeights, Status, Undo,
    Undone, VersionDeleted, VersionList, VersionPut, Weights,
};
use crate::policy::edit::route_name;
use crate::policy::model::{RouteDoc, RuleDoc, ServiceDoc};
use crate::policy::PolicyDoc;
use args::{
    Cmd, DocCmd, ListCmd, PolicyCmd, RolloutCmd, RulesCmd, StartArgs, UpstreamsCmd, VersionsCmd,
    WeightsCmd,
};
use client::{Answer, Api};
use doc::Part;
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Why a ctl command failed; each kind has its exit code (see the module documentation).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Wrong arguments, an unreadable or invalid document: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The API refused (4xx): exit 1.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// The API failed (5xx): exit 3.
    #[error("{}", .0.message)]
    Server(Refusal),
    /// The API cannot be reached: exit 3.
    #[error("cannot reach the admin API at {0}")]
    Unreachable(String),
    /// Something answered, but not a graygate admin API: exit 3.
    #[error(
        "{addr} is not a graygate admin API: its answer to {what} ({status}) has no \
         X-Graygate-Admin header. Give --addr (or GRAYGATE_ADMIN) the admin address graygate \
         prints at start (`graygate: admin on http://...`), not a traffic listener"
    )]
    NotAdmin {
        addr: String,
        what: String,
        status: StatusCode,
    },
    /// The admin API answered with JSON this ctl does not read: exit 3.
    #[error(
        "the admin API at {addr} answered {what} with JSON this graygate ctl does not read \
         (is it another version of graygate?): {source}"
    )]
    Unexpected {
        addr: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The answer could not be printed: exit 2, or quietly 0 when stdout was closed early.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// The API did part of what was asked and refused the rest, as its answer (printed) says:
    /// exit 1.
    #[error("{0}")]
    Incomplete(String),
}

/// A refusal by the API, as it wrote it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// `None` when the body was not the API's error shape.
    pub code: Option<ErrorCode>,
    /// The field at fault, as the API names it.
    pub field: Option<String>,
    /// What is shown: the API's message (placed at a line of the user's document when it is
    /// about one of its fields).
    pub message: String,
    /// The body as it came, for `--json`.
    pub raw: Value,
}

impl CtlError {
    fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) | CtlError::Incomplete(_) => 1,
            CtlError::Usage(_) | CtlError::Output(_) => 2,
            CtlError::Server(_)
            | CtlError::Unreachable(_)
            | CtlError::NotAdmin { .. }
            | CtlError::Unexpected { .. } => 3,
        }
    }

    /// A closed stdout (`| head -1`): the reader has what it wanted.
    fn is_closed_pipe(&self) -> bool {
        matches!(self, CtlError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
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
            output::note(&format!("graygate ctl: cannot start: {e}"));
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_closed_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                CtlError::Refused(r) | CtlError::Server(r) => {
                    if json_mode && !r.raw.is_string() {
                        output::note(&r.raw.to_string());
                    } else {
                        output::note(&r.message);
                    }
                }
                _ => output::note(&format!("graygate ctl: {e}")),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// The JSON of a request body.
fn json_body(value: &impl Serialize) -> Result<Vec<u8>, CtlError> {
    serde_json::to_vec(value).map_err(|e| CtlError::Usage(format!("cannot write the request: {e}")))
}

async fn execute(args: CtlArgs) -> Result<(), CtlError> {
    let api = Api::new(&args.addr, args.token.clone())?.with_wait(args.wait);
    let rev = IfMatch::from(args.revision);
    let out = output::Printer { json: args.json };
    match args.command {
        Cmd::Status => {
            let a: Answer<Revisioned<Status>> = api.get(paths::STATUS).await?;
            out.show(&a, output::status)?;
        }
        Cmd::OverrideToken { service, ttl } => {
            let a: Answer<PolicyDoc> = api.get(paths::POLICY).await?;
            let s = a
                .body
                .services
                .iter()
                .find(|s| s.name == service)
                .ok_or_else(|| CtlError::Usage(format!("no service named {service}")))?;
            let (Some(o), Some(key)) = (
                &s.override_,
                s.override_.as_ref().and_then(|o| o.key.as_deref()),
            ) else {
                return Err(CtlError::Usage(format!(
                    "service {service} has no override with a `key`: set override.key to sign values"
                )));
            };
            let until = std::time::SystemTime::now() + ttl;
            let expires = until
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let value = crate::policy::token::override_value(
                &crate::policy::token::SigningKey::new(key),
                &service,
                &o.version,
                expires,
            );
            println!("{value}");
            let carrier = match (&o.header, &o.cookie) {
                (Some(h), _) => format!("header {h}"),
                (_, Some(c)) => format!("cookie {c}"),
                _ => "override".to_string(),
            };
            output::note(&format!(
                "send it in the {carrier}: {} of {service} until {}",
                o.version,
                humantime::format_rfc3339_seconds(until)
            ));
        }
        Cmd::Policy { cmd } => match cmd {
            PolicyCmd::Get => {
                let a: Answer<PolicyDoc> = api.get(paths::POLICY).await?;
                out.pretty(&a.raw)?;
                if let Some(revision) = a.revision {
                    output::note(&format!("revision {revision}"));
                }
            }
            PolicyCmd::Put { file } => {
                let doc = doc::read::<PolicyDoc>(&file, Part::Policy)?;
                let a: Answer<Revisioned<PolicyReplaced>> =
                    doc.send(&api, Method::PUT, paths::POLICY, rev).await?;
                out.done(&a, "policy replaced")?;
            }
        },
        Cmd::Routes { cmd } => routes(&api, &out, rev, cmd).await?,
        Cmd::Services { cmd } => services(&api, &out, rev, cmd).await?,
        Cmd::Versions { cmd } => match cmd {
            VersionsCmd::List { service } => {
                let a: Answer<Revisioned<VersionList>> =
                    api.get(&paths::versions(&service)).await?;
                out.show(&a, output::versions)?;
            }
            VersionsCmd::Set {
                service,
                version,
                upstream,
            } => {
                let body = json_body(&SetVersion { upstream })?;
                let path = paths::version(&service, &version);
                let a: Answer<Revisioned<VersionPut>> =
                    api.call(Method::PUT, &path, rev, Some(body)).await?;
                let set = &a.body.body.version;
                let what = format!(
                    "{service}: version {} -> upstream {}",
                    set.name, set.upstream
                );
                out.done(&a, &what)?;
            }
            VersionsCmd::Delete { service, version } => {
                let a: Answer<Revisioned<VersionDeleted>> =
                    delete(&api, rev, &paths::version(&service, &version)).await?;
                let what = format!("{service}: version {} deleted", a.body.body.deleted);
                out.done(&a, &what)?;
            }
        },
        Cmd::Rules { cmd } => rules(&api, &out, rev, cmd).await?,
        Cmd::Weights { cmd } => match cmd {
            WeightsCmd::Get { service } => {
                let a: Answer<Revisioned<Weights>> = api.get(&paths::weights(&service)).await?;
                out.show(&a, output::weights)?;
            }
            WeightsCmd::Set {
                service,
                weights,
                by,
                salt,
            } => {
                let weights = weights
                    .iter()
                    .map(|w| args::weight(w))
                    .collect::<Result<BTreeMap<_, _>, _>>()?;
                let by = by.as_deref().map(args::identity).transpose()?;
                let body = json_body(&SetWeights { weights, by, salt })?;
                let path = paths::weights(&service);
                let a: Answer<Revisioned<Weights>> =
                    api.call(Method::PUT, &path, rev, Some(body)).await?;
                out.show(&a, output::weights)?;
            }
        },
        Cmd::Upstreams { cmd } => upstreams(&api, &out, rev, cmd).await?,
        Cmd::List { cmd } => lists(&api, &out, cmd).await?,
        Cmd::Explain(e) => {
            let mut headers = BTreeMap::new();
            for h in &e.headers {
                let (k, v) = args::pair(h, ':', "NAME:VALUE")?;
                headers.insert(k.to_string(), v.to_string());
            }
            let mut cookies = BTreeMap::new();
            for c in &e.cookies {
                let (k, v) = args::pair(c, '=', "NAME=VALUE")?;
                cookies.insert(k.to_string(), v.to_string());
            }
            let body = json_body(&Explain {
                method: Some(e.method),
                host: e.host,
                path: Some(e.path),
                query: e.query,
                headers,
                cookies,
                client_ip: e.ip,
                peer: e.peer,
                random: None,
                https: e.https,
                followed: e.followed,
                mirror_random: None,
            })?;
            let a: Answer<Explanation> = api
                .call(Method::POST, paths::EXPLAIN, IfMatch::Any, Some(body))
                .await?;
            out.show(&a, output::explain)?;
        }
        Cmd::Promote { service, version } => {
            let body = json_body(&Promote { version })?;
            let path = paths::promote(&service);
            let a: Answer<Revisioned<Promoted>> =
                api.call(Method::POST, &path, rev, Some(body)).await?;
            let p = &a.body.body;
            let what = format!(
                "{service}: {} is stable, everyone not sent elsewhere by a rule goes there \
                 (rollback target: {})",
                p.stable, p.previous_stable
            );
            out.done(&a, &what)?;
        }
        Cmd::Rollback {
            service,
            clear_rules,
        } => {
            let body = json_body(&Rollback { clear_rules })?;
            let path = paths::rollback(&service);
            let a: Answer<Revisioned<RolledBack>> =
                api.call(Method::POST, &path, rev, Some(body)).await?;
            let r = &a.body.body;
            let mut text = match &r.demoted {
                Some(demoted) => {
                    let weight = r
                        .restored_weight
                        .map(|w| format!(", {demoted} back at {}", output::pct(w)))
                        .unwrap_or_default();
                    format!(
                        "{service}: promote of {demoted} undone: {} is stable again, rules and \
                         split as before{weight}",
                        r.stable
                    )
                }
                None => format!(
                    "{service}: weights 0, everyone not matched by a rule on {}",
                    r.stable
                ),
            };
            if r.rules_cleared > 0 {
                text.push_str(&format!(" ({} rules cleared)", r.rules_cleared));
            }
            out.done(&a, &text)?;
        }
        Cmd::Rollout { cmd } => rollout(&api, &out, rev, cmd).await?,
        Cmd::History {
            revision: Some(revision),
            ..
        } => {
            let path = paths::history_one(revision);
            let a: Answer<Revisioned<HistoryOne>> = api.get(&path).await?;
            out.show(&a, output::history_one)?;
        }
        Cmd::History {
            revision: None,
            limit,
            all,
            before,
        } => {
            let wanted = if all { usize::MAX } else { limit };
            let a = history_pages(&api, wanted, before).await?;
            out.show(&a, output::history)?;
        }
        Cmd::Reload { force } => {
            let path = paths::reload(&ReloadQuery { force });
            let a: Answer<Reloaded> = api.call(Method::POST, &path, IfMatch::Any, None).await?;
            out.show(&a, output::reloaded)?;
            if a.body.incomplete() {
                let parts: Vec<&str> = a
                    .body
                    .parts()
                    .iter()
                    .filter(|(_, o, _)| matches!(o, ReloadOutcome::Refused | ReloadOutcome::Failed))
                    .map(|(part, _, _)| *part)
                    .collect();
                return Err(CtlError::Incomplete(format!(
                    "not everything was reloaded: {} not applied (see above)",
                    parts.join(", ")
                )));
            }
        }
        Cmd::Undo { to } => {
            let body = json_body(&Undo { revision: to })?;
            let a: Answer<Revisioned<Undone>> =
                api.call(Method::POST, paths::UNDO, rev, Some(body)).await?;
            let what = format!("policy of revision {} restored", a.body.body.restored);
            out.done(&a, &what)?;
        }
        Cmd::Fleet { cmd } => match cmd.unwrap_or(args::FleetCmd::List) {
            args::FleetCmd::List => {
                let a: Answer<crate::api::Fleet> = api.get(paths::FLEET).await?;
                out.show(&a, output::fleet)?;
            }
            args::FleetCmd::Restore => {
                let a: Answer<crate::api::Fleet> = api
                    .call(Method::POST, paths::FLEET_RESTORE, IfMatch::Any, None)
                    .await?;
                out.show(&a, |f| {
                    format!(
                        "the store holds revision {} again\n{}",
                        f.revision.unwrap_or_default(),
                        output::fleet(f)
                    )
                })?;
            }
        },
    }
    // `--wait` that ran out: the change was made, but not every instance applies it.
    if let Some(lagging) = api.ran_out() {
        return Err(CtlError::Incomplete(format!(
            "the change was made, but not every live instance applied it within the wait: {lagging}"
        )));
    }
    Ok(())
}

/// The plan of `rollout start`: the --plan file (or the default plan), with the flags over it.
fn plan(args: StartArgs) -> Result<crate::rollout::RolloutDoc, CtlError> {
    let mut plan = match &args.plan {
        Some(file) => doc::read::<crate::rollout::RolloutDoc>(file, Part::Policy)?.value,
        None => crate::rollout::RolloutDoc::new(args.version.clone().unwrap_or_default()),
    };
    if let Some(version) = args.version {
        plan.version = version;
    }
    if let Some(steps) = &args.steps {
        plan.steps = args::steps(steps)?;
    }
    if let Some(t) = &args.step_time {
        plan.step_time = args::duration("step-time", t)?;
    }
    if let Some(t) = &args.interval {
        plan.interval = args::duration("interval", t)?;
    }
    if let Some(t) = &args.max_wait {
        plan.max_wait = args::duration("max-wait", t)?;
    }
    if let Some(t) = &args.post_promotion {
        plan.post_promotion = args::duration("post-promotion", t)?;
    }
    if let Some(n) = args.min_requests {
        plan.analysis.min_requests = n;
    }
    if let Some(n) = args.failure_limit {
        plan.failure_limit = n;
    }
    if args.dry_run {
        plan.dry_run = true;
    }
    Ok(plan)
}

/// `ctl history`: up to `wanted` changes older than `before`, following the API's pages (each at
/// most [`HistoryQuery::MAX_LIMIT`]), as one answer.
async fn history_pages(
    api: &Api,
    wanted: usize,
    before: Option<u64>,
) -> Result<Answer<Revisioned<History>>, CtlError> {
    let first = HistoryQuery {
        limit: Some(wanted.clamp(1, HistoryQuery::MAX_LIMIT)),
        before,
    };
    let mut answer: Answer<Revisioned<History>> = api.get(&paths::history(&first)).await?;
    while answer.body.body.entries.len() < wanted {
        let Some(next) = answer.body.body.next.take() else {
            break;
        };
        let page: Answer<Revisioned<History>> = api.get(&next).await?;
        answer.body.body.entries.extend(page.body.body.entries);
        answer.body.body.next = page.body.body.next;
    }
    let entries = &mut answer.body.body.entries;
    if entries.len() > wanted {
        entries.truncate(wanted);
        // The next page starts below the last change kept, not the last one read.
        answer.body.body.next = entries.last().map(|last| {
            paths::history(&HistoryQuery {
                limit: first.limit,
                before: Some(last.revision),
            })
        });
    }
    answer.raw = serde_json::to_value(&answer.body).unwrap_or(Value::Null);
    Ok(answer)
}

async fn rollout(
    api: &Api,
    out: &output::Printer,
    rev: IfMatch,
    cmd: RolloutCmd,
) -> Result<(), CtlError> {
    let (service, action) = match cmd {
        RolloutCmd::Status { service } => {
            let a: Answer<Revisioned<RolloutView>> = api.get(&paths::rollout(&service)).await?;
            return out.show(&a, output::rollout);
        }
        RolloutCmd::Start(start) => {
            let service = start.service.clone();
            let body = json_body(&plan(*start)?)?;
            let a: Answer<Revisioned<RolloutView>> = api
                .call(Method::POST, &paths::rollout(&service), rev, Some(body))
                .await?;
            let what = output::rollout_line(&a.body.body);
            return out.done(&a, &what);
        }
        RolloutCmd::Pause { service } => (service, "pause"),
        RolloutCmd::Resume { service } => (service, "resume"),
        RolloutCmd::Promote { service } => (service, "promote"),
        RolloutCmd::Abort { service } => (service, "abort"),
        RolloutCmd::Retry { service } => (service, "retry"),
    };
    let path = paths::rollout_action(&service, action);
    let a: Answer<Revisioned<RolloutView>> = api.call(Method::POST, &path, rev, None).await?;
    let what = output::rollout_line(&a.body.body);
    out.done(&a, &what)
}

/// Prints one document (a route, a service, a rule) as the API sent it, once it reads as a `T`.
async fn print_document<T: DeserializeOwned>(
    api: &Api,
    out: &output::Printer,
    path: &str,
) -> Result<(), CtlError> {
    let a: Answer<T> = api.get(path).await?;
    out.pretty(&a.raw)
}

/// `DELETE path`.
async fn delete<T: DeserializeOwned>(
    api: &Api,
    rev: IfMatch,
    path: &str,
) -> Result<Answer<T>, CtlError> {
    api.call(Method::DELETE, path, rev, None).await
}

/// What a `PUT` did.
fn created_or_replaced(created: bool) -> &'static str {
    if created {
        "created"
    } else {
        "replaced"
    }
}

/// `upstreams`: the table an instance runs, and the changes of the shared ones.
async fn upstreams(
    api: &Api,
    out: &output::Printer,
    rev: IfMatch,
    cmd: UpstreamsCmd,
) -> Result<(), CtlError> {
    use crate::api::{ServerWritten, SetServer, UpstreamDeleted, UpstreamList, UpstreamPut};
    use crate::policy::upstreams::{ServerDoc, UpstreamDoc};
    let set = |name: &str, address: &str, body: SetServer| {
        let path = paths::upstream_server(name, address);
        async move {
            let body = json_body(&body)?;
            api.call::<Revisioned<ServerWritten>>(Method::PATCH, &path, rev, Some(body))
                .await
        }
    };
    match cmd {
        UpstreamsCmd::List => {
            let a: Answer<Revisioned<UpstreamList>> = api.get(paths::UPSTREAMS).await?;
            out.show(&a, output::upstreams)?;
        }
        UpstreamsCmd::Get { name } => {
            let a: Answer<serde_json::Value> = api.get(&paths::upstream(&name)).await?;
            out.pretty(&a.raw)?;
        }
        UpstreamsCmd::Put { name, file } => {
            let doc = doc::read::<UpstreamDoc>(&file, Part::Policy)?;
            let path = paths::upstream(&name);
            let a: Answer<Revisioned<UpstreamPut>> = doc.send(api, Method::PUT, &path, rev).await?;
            let verb = if a.body.body.created {
                "defined"
            } else {
                "replaced"
            };
            out.done(&a, &format!("upstream {name} {verb}"))?;
        }
        UpstreamsCmd::Delete { name } => {
            let a: Answer<Revisioned<UpstreamDeleted>> =
                delete(api, rev, &paths::upstream(&name)).await?;
            out.done(&a, &format!("upstream {name} deleted"))?;
        }
        UpstreamsCmd::AddServer {
            name,
            address,
            weight,
            drained,
        } => {
            let body = json_body(&ServerDoc {
                address: address.clone(),
                weight,
                drained,
            })?;
            let path = paths::upstream_servers(&name);
            let a: Answer<Revisioned<ServerWritten>> =
                api.call(Method::POST, &path, rev, Some(body)).await?;
            out.done(&a, &format!("upstream {name}: server {address} added"))?;
        }
        UpstreamsCmd::RemoveServer { name, address } => {
            let a: Answer<Revisioned<ServerWritten>> =
                delete(api, rev, &paths::upstream_server(&name, &address)).await?;
            out.done(&a, &format!("upstream {name}: server {address} removed"))?;
        }
        UpstreamsCmd::Drain { name, address } => {
            let body = SetServer {
                drained: Some(true),
                ..SetServer::default()
            };
            let a = set(&name, &address, body).await?;
            out.done(&a, &format!("upstream {name}: server {address} drained"))?;
        }
        UpstreamsCmd::Undrain { name, address } => {
            let body = SetServer {
                drained: Some(false),
                ..SetServer::default()
            };
            let a = set(&name, &address, body).await?;
            out.done(&a, &format!("upstream {name}: server {address} undrained"))?;
        }
        UpstreamsCmd::Weight {
            name,
            address,
            weight,
        } => {
            let body = SetServer {
                weight: Some(weight),
                ..SetServer::default()
            };
            let a = set(&name, &address, body).await?;
            out.done(
                &a,
                &format!("upstream {name}: server {address} weight {weight}"),
            )?;
        }
    }
    Ok(())
}

/// `routes`: list, get, put, delete.
async fn routes(
    api: &Api,
    out: &output::Printer,
    rev: IfMatch,
    cmd: DocCmd,
) -> Result<(), CtlError> {
    match cmd {
        DocCmd::List => {
            let a: Answer<Revisioned<RouteList>> = api.get(paths::ROUTES).await?;
            out.show(&a, output::routes)?;
        }
        DocCmd::Get { name } => print_document::<RouteDoc>(api, out, &paths::route(&name)).await?,
        DocCmd::Put { file, name } => {
            let doc = doc::read::<RouteDoc>(&file, Part::Route)?;
            let name = name.unwrap_or_else(|| route_name(&doc.value).to_string());
            let path = paths::route(&name);
            let a: Answer<Revisioned<RoutePut>> = doc.send(api, Method::PUT, &path, rev).await?;
            let verb = created_or_replaced(a.body.body.created);
            out.done(&a, &format!("route {name} {verb}"))?;
        }
        DocCmd::Delete { name } => {
            let a: Answer<Revisioned<RouteDeleted>> =
                delete(api, rev, &paths::route(&name)).await?;
            out.done(&a, &format!("route {name} deleted"))?;
        }
    }
    Ok(())
}

/// `services`: list, get, put, delete.
async fn services(
    api: &Api,
    out: &output::Printer,
    rev: IfMatch,
    cmd: DocCmd,
) -> Result<(), CtlError> {
    match cmd {
        DocCmd::List => {
            let a: Answer<Revisioned<ServiceList>> = api.get(paths::SERVICES).await?;
            out.show(&a, output::services)?;
        }
        DocCmd::Get { name } => {
            print_document::<ServiceDoc>(api, out, &paths::service(&name)).await?
        }
        DocCmd::Put { file, name } => {
            let doc = doc::read::<ServiceDoc>(&file, Part::Service)?;
            let name = name.unwrap_or_else(|| doc.value.name.clone());
            let path = paths::service(&name);
            let a: Answer<Revisioned<ServicePut>> = doc.send(api, Method::PUT, &path, rev).await?;
            let verb = created_or_replaced(a.body.body.created);
            out.done(&a, &format!("service {name} {verb}"))?;
        }
        DocCmd::Delete { name } => {
            let a: Answer<Revisioned<ServiceDeleted>> =
                delete(api, rev, &paths::service(&name)).await?;
            out.done(&a, &format!("service {name} deleted"))?;
        }
    }
    Ok(())
}

/// `rules`: list, get, add, replace, delete.
async fn rules(
    api: &Api,
    out: &output::Printer,
    rev: IfMatch,
    cmd: RulesCmd,
) -> Result<(), CtlError> {
    match cmd {
        RulesCmd::List { service } => {
            let a: Answer<Revisioned<RuleList>> = api.get(&paths::rules(&service)).await?;
            out.show(&a, output::rules)?;
        }
        RulesCmd::Get { service, name } => {
            print_document::<RuleDoc>(api, out, &paths::rule(&service, &name)).await?
        }
        RulesCmd::Add {
            service,
            rule,
            position,
        } => {
            let doc = doc::read::<RuleDoc>(&rule, Part::Rule)?;
            let path = paths::rules_at(&service, &RuleQuery { position });
            let a: Answer<Revisioned<RuleWritten>> =
                doc.send(api, Method::POST, &path, rev).await?;
            let what = format!("{service}: rule {} added", a.body.body.rule.name);
            out.done(&a, &what)?;
        }
        RulesCmd::Replace {
            service,
            name,
            rule,
        } => {
            let doc = doc::read::<RuleDoc>(&rule, Part::Rule)?;
            let path = paths::rule(&service, &name);
            let a: Answer<Revisioned<RuleWritten>> = doc.send(api, Method::PUT, &path, rev).await?;
            out.done(&a, &format!("{service}: rule {name} replaced"))?;
        }
        RulesCmd::Delete { service, name } => {
            let a: Answer<Revisioned<RuleDeleted>> =
                delete(api, rev, &paths::rule(&service, &name)).await?;
            let what = format!("{service}: rule {} deleted", a.body.body.deleted.name);
            out.done(&a, &what)?;
        }
    }
    Ok(())
}

/// `list`: add, remove, show, count.
async fn lists(api: &Api, out: &output::Printer, cmd: ListCmd) -> Result<(), CtlError> {
    match cmd {
        ListCmd::Add {
            list,
            keys,
            file,
            value,
            ttl,
        } => {
            let entries = args::keys(keys, file.as_deref())?
                .into_iter()
                .map(|key| NewEntry {
                    key,
                    value: Some(value.clone()),
                    ttl: ttl.clone(),
                })
                .collect();
            let body = json_body(&NewEntries { entries })?;
            let path = paths::list_entries(&list);
            let a: Answer<EntriesWritten> = api
                .call(Method::POST, &path, IfMatch::Any, Some(body))
                .await?;
            let line = format!("list {list}: {} entries written", a.body.written);
            out.show(&a, |_| line)?;
        }
        ListCmd::Remove { list, keys, file } => {
            let keys = args::keys(keys, file.as_deref())?;
            let asked = keys.len();
            let body = json_body(&RemoveEntries { keys })?;
            let path = paths::list_entries(&list);
            let a: Answer<EntriesRemoved> = api
                .call(Method::DELETE, &path, IfMatch::Any, Some(body))
                .await?;
            let line = format!("list {list}: {} of {asked} entries removed", a.body.removed);
            out.show(&a, |_| line)?;
        }
        ListCmd::Show { list } => {
            let a: Answer<EntryList> = api.get(&paths::list_entries(&list)).await?;
            out.show(&a, output::entries)?;
        }
        ListCmd::Count { list } => {
            let a: Answer<EntryCount> = api.get(&paths::list_count(&list)).await?;
            out.show(&a, |c| c.count.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(CtlError::Usage(String::new()).exit_code(), 2);
        assert_eq!(CtlError::Unreachable(String::new()).exit_code(), 3);
        let refused = CtlError::Refused(Refusal {
            status: StatusCode::CONFLICT,
            code: Some(ErrorCode::StaleRevision),
            field: None,
            message: "stale".into(),
            raw: Value::Null,
        });
        assert_eq!(refused.exit_code(), 1);
        assert_eq!(refused.to_string(), "stale");
        let not_admin = CtlError::NotAdmin {
            addr: "http://127.0.0.1:8080".into(),
            what: "GET /healthz".into(),
            status: StatusCode::OK,
        };
        assert_eq!(not_admin.exit_code(), 3);
        assert!(
            not_admin
                .to_string()
                .starts_with("http://127.0.0.1:8080 is not a graygate admin API: its answer to GET /healthz (200 OK) has no X-Graygate-Admin header"),
            "{not_admin}"
        );
        let closed = CtlError::Output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(closed.is_closed_pipe());
        let full = CtlError::Output(std::io::Error::other("disk full"));
        assert!(!full.is_closed_pipe());
        assert_eq!(full.exit_code(), 2);
    }
}
