//! Reading the config file again while graygate runs: SIGHUP, `POST /v1/reload` and
//! `graygate ctl reload` all come here, and get the same answer ([`Reloaded`]).
//!
//! The live-change model (`docs/config.md`): the config's **policy seeds** the store, and the rest
//! of the config is what a reload applies.
//! - **Upstreams** (added, removed, servers or health settings changed) and their **timeouts**
//!   (connect, response, idle, and the client and upstream body timeouts): the data plane's table is rebuilt with stable indexes and swapped
//!   together with the upstream names the policy compiles against ([`Gateway::set_upstreams`]).
//!   The active health checks of new and rebuilt upstreams run once before the swap and go on
//!   after it; those of removed ones stop. An upstream the running policy still uses cannot be
//!   removed: that part is refused and the table stays.
//! - **The log format** (`[log] format`), when the process gave a switch for it
//!   ([`Reloader::set_log_format_switch`]; `graygate run` does).
//! - **The TLS certificates** (`[tls] certs`: the list and the files' contents), when the
//!   process serves TLS ([`Reloader::set_tls`]): read and checked, then swapped for the next
//!   handshakes; a set that fails keeps the one in force.
//! - **The policy**: applied only when the file's changed since it was last applied, and never
//!   over a rollout in progress unless forced ([`Gateway::apply_config_policy`]), so that a
//!   reload never undoes runtime changes by surprise.
//! - Everything else (listeners, store, cache, client IP, admin, metrics, access log, ...) is
//!   set at start: a reload that finds it changed says so (`restart_needed`) and leaves it.
//!
//! Reloads run one at a time; an invalid file reloads nothing ([`ReloadError`]).

use crate::api::{ReloadOutcome, Reloaded, ReloadedPart, ReloadedPolicy};
use crate::config::{self, Config, ConfigError, LogFormat};
use crate::gateway::{ConfigPolicy, Gateway, GatewayError, TableChange};
use crate::proxy::tls::{CertsReloaded, LiveCerts};
use crate::proxy::LiveUpstreams;
use crate::store::ErrorChain;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Switches the process log to another format; an error says why it could not.
pub type LogFormatSwitch = Box<dyn Fn(LogFormat) -> Result<(), String> + Send + Sync>;

/// Why a reload changed nothing at all.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file cannot be read or is not valid (`file:line:column: field: message`).
    #[error("config not reloaded: {0}")]
    Config(#[from] ConfigError),
}

/// What reloads the config of a running graygate. See the module documentation.
pub struct Reloader {
    /// The config in force: what the next reload compares the file with. Parts a reload did
    /// not apply keep their old values here, so that the next reload tries them again. Locked
    /// for the whole reload: one at a time.
    config: tokio::sync::Mutex<Config>,
    gateway: Arc<Gateway>,
    upstreams: Arc<LiveUpstreams>,
    /// Set by the process that owns the log (`graygate run`); without it the log format is set
    /// at start only.
    log_format: OnceLock<LogFormatSwitch>,
    /// The certificates in force, when the process serves TLS.
    tls: OnceLock<Arc<LiveCerts>>,
}

impl Reloader {
    /// A reloader of `config` (the config graygate started with) for this gateway and table.
    pub fn new(config: Config, gateway: Arc<Gateway>, upstreams: Arc<LiveUpstreams>) -> Self {
        Reloader {
            config: tokio::sync::Mutex::new(config),
            gateway,
            upstreams,
            log_format: OnceLock::new(),
            tls: OnceLock::new(),
        }
    }

    /// Gives the reloader the certificates in force, so that a reload applies `[tls] certs`.
    /// Only the first call counts.
    pub fn set_tls(&self, certs: Arc<LiveCerts>) {
        let _ = self.tls.set(certs);
    }

    /// Gives the reloader a way to switch the log format. Only the first call counts.
    pub fn set_log_format_switch(&self, switch: LogFormatSwitch) {
        let _ = self.log_format.set(switch);
    }

    /// Reads the config file again and applies what can be applied while running (see the
    /// module documentation). `force` applies the config's policy even if it did not change
    /// since it was last applied and even over a rollout in progress; `why` (`SIGHUP`, `reload
    /// by alice`) goes into the history summary of a policy it applies.
    pub async fn reload(&self, force: bool, why: &str) -> Result<Reloaded, ReloadError> {
        let mut current = self.config.lock().await;
        let new = config::load(&current.file)?;
        let mut next = current.clone();

        let (upstreams, timeouts) = self.upstreams_and_timeouts(&current, &new).await;
        if upstreams.outcome != ReloadOutcome::Refused && upstreams.outcome != ReloadOutcome::Failed
        {
            next.upstreams = new.upstreams.clone();
            next.timeouts.connect = new.timeouts.connect;
            next.timeouts.upstream_response = new.timeouts.upstream_response;
            next.timeouts.idle = new.timeouts.idle;
            next.timeouts.client_body = new.timeouts.client_body;
            next.timeouts.upstream_body = new.timeouts.upstream_body;
        }

        let log = self.log(current.log.format, new.log.format);
        if log.outcome == ReloadOutcome::Applied {
            next.log = new.log.clone();
        }

        let tls = self.certs(&current, &new).await;
        if tls
            .as_ref()
            .is_some_and(|t| t.outcome == ReloadOutcome::Applied)
        {
            if let (Some(next), Some(new)) = (next.tls.as_mut(), new.tls.as_ref()) {
                next.certs = new.certs.clone();
            }
        }

        let doc = new.policy.as_ref().map(|p| &p.doc);
        let summary = if force {
            format!("{why}, forced")
        } else {
            why.to_string()
        };
        let policy = match self.gateway.apply_config_policy(doc, force, &summary).await {
            Ok(outcome) => self.policy_part(outcome),
            Err(e) => ReloadedPolicy {
                outcome: ReloadOutcome::Failed,
                message: format!("not applied: {}; the running policy stays", ErrorChain(&e)),
                revision: self.gateway.revision(),
                rollouts: Vec::new(),
            },
        };
        next.policy = new.policy.clone();

        let restart_needed = restart_needed(&current, &new);
        *current = next;
        Ok(Reloaded {
            config: current.file.display().to_string(),
            upstreams,
            timeouts,
            log,
            tls,
            policy,
            restart_needed,
        })
    }

    /// Applies `[tls] certs` when the process serves TLS and the new config still has `[tls]`
    /// (adding or removing it takes a restart: `restart_needed` says so).
    async fn certs(&self, current: &Config, new: &Config) -> Option<ReloadedPart> {
        let live = self.tls.get()?;
        current.tls.as_ref()?;
        let Some(tls) = &new.tls else {
            return Some(ReloadedPart {
                outcome: ReloadOutcome::Refused,
                message: "not applied: `[tls]` is gone from the config; a restart removes the \
                          TLS listeners, the certificates in force stay until then"
                    .into(),
            });
        };
        Some(match live.reload(&tls.certs).await {
            Ok(CertsReloaded::Unchanged(described)) => ReloadedPart {
                outcome: ReloadOutcome::Unchanged,
                message: format!("{described}, as before"),
            },
            Ok(CertsReloaded::Applied(described)) => ReloadedPart {
                outcome: ReloadOutcome::Applied,
                message: described,
            },
            Err(e) => ReloadedPart {
                outcome: ReloadOutcome::Failed,
                message: format!("not applied: {e}; the certificates in force stay"),
            },
        })
    }

    /// Rebuilds the upstream table if the upstreams or their timeouts changed, and swaps it with
    /// the gateway's upstream names. With a gateway that owns the table, the file's upstreams
    /// are overlaid by the running policy's ([`Gateway::set_file_upstreams`]).
    async fn upstreams_and_timeouts(
        &self,
        current: &Config,
        new: &Config,
    ) -> (ReloadedPart, ReloadedPart) {
        let part = |outcome, message: String| ReloadedPart { outcome, message };
        let timeouts_text = timeouts_text(new);
        let swapped = match self.gateway.upstream_table() {
            Some(_) => self
                .gateway
                .set_file_upstreams(new.upstreams.clone(), new.timeouts)
                .await
                .map_err(|e| match e {
                    GatewayError::UpstreamInUse { .. } => {
                        (ReloadOutcome::Refused, ErrorChain(&e).to_string())
                    }
                    e => (
                        ReloadOutcome::Failed,
                        format!("not applied: {}", ErrorChain(&e)),
                    ),
                }),
            None => self.plan_and_install(new).await,
        };
        let timeouts_part = |applied: ReloadOutcome, changed: bool| {
            if changed {
                part(applied, timeouts_text.clone())
            } else {
                part(
                    ReloadOutcome::Unchanged,
                    format!("{timeouts_text}, as before"),
                )
            }
        };
        match swapped {
            Ok(change) => {
                let mut what = Vec::new();
                for (verb, names) in [
                    ("added", &change.added),
                    ("removed", &change.removed),
                    ("changed", &change.changed),
                ] {
                    if !names.is_empty() {
                        what.push(format!("{verb} {}", names.join(", ")));
                    }
                }
                let upstreams = if what.is_empty() {
                    let names: Vec<&str> =
                        current.upstreams.iter().map(|u| u.name.as_str()).collect();
                    part(
                        ReloadOutcome::Unchanged,
                        format!("{} as before", names.join(", ")),
                    )
                } else {
                    part(ReloadOutcome::Applied, what.join("; "))
                };
                (
                    upstreams,
                    timeouts_part(ReloadOutcome::Applied, change.timeouts_changed),
                )
            }
            Err((ReloadOutcome::Failed, message)) => (
                part(ReloadOutcome::Failed, message.clone()),
                part(ReloadOutcome::Failed, message),
            ),
            Err((outcome, message)) => {
                let timeouts_changed = current.timeouts.connect != new.timeouts.connect
                    || current.timeouts.upstream_response != new.timeouts.upstream_response
                    || current.timeouts.idle != new.timeouts.idle
                    || current.timeouts.client_body != new.timeouts.client_body
                    || current.timeouts.upstream_body != new.timeouts.upstream_body;
                let timeouts = if timeouts_changed {
                    part(
                        outcome,
                        "not applied: they come with the upstreams, which were refused".into(),
                    )
                } else {
                    timeouts_part(ReloadOutcome::Unchanged, false)
                };
                (part(outcome, message), timeouts)
            }
        }
    }

    /// The table of a gateway that has upstream names only: planned from the file alone and
    /// installed here.
    async fn plan_and_install(&self, new: &Config) -> Result<TableChange, (ReloadOutcome, String)> {
        let plan = match self.upstreams.plan(&new.upstreams, &new.timeouts) {
            // The first health check of the servers of new and rebuilt upstreams, before a
            // request can reach them.
            Ok(plan) => {
                plan.start_health_checks().await;
                plan
            }
            // The config checked them already: only a table built in code could get here.
            Err(e) => {
                return Err((
                    ReloadOutcome::Failed,
                    format!("not applied: {}: {e}", e.field()),
                ))
            }
        };
        let change = TableChange {
            added: plan.added.clone(),
            removed: plan.removed.clone(),
            changed: plan.changed.clone(),
            timeouts_changed: plan.timeouts_changed,
        };
        if plan.is_empty() {
            return Ok(change);
        }
        if !plan.added.is_empty() || !plan.removed.is_empty() {
            let names = plan.policy_names();
            self.gateway
                .set_upstreams(names, || self.upstreams.install(plan))
                .await
                .map_err(|e| (ReloadOutcome::Refused, ErrorChain(&e).to_string()))?;
        } else {
            self.upstreams.install(plan);
        }
        Ok(change)
    }

    /// Switches the log format if it changed and the process can.
    fn log(&self, current: LogFormat, new: LogFormat) -> ReloadedPart {
        let name = |f: LogFormat| match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        if current == new {
            return ReloadedPart {
                outcome: ReloadOutcome::Unchanged,
                message: format!("format {}, as before", name(new)),
            };
        }
        let switched = match self.log_format.get() {
            Some(switch) => switch(new),
            None => {
                Err("this process sets its log format at start only: restart to apply it".into())
            }
        };
        match switched {
            Ok(()) => ReloadedPart {
                outcome: ReloadOutcome::Applied,
                message: format!("format {}", name(new)),
            },
            Err(why) => ReloadedPart {
                outcome: ReloadOutcome::Refused,
                message: format!("format {} not applied: {why}", name(new)),
            },
        }
    }

    /// The policy part of the answer.
    fn policy_part(&self, outcome: ConfigPolicy) -> ReloadedPolicy {
        let policy = |outcome, message: String, revision| ReloadedPolicy {
            outcome,
            message,
            revision,
            rollouts: Vec::new(),
        };
        match outcome {
            ConfigPolicy::None => policy(
                ReloadOutcome::Unchanged,
                "the config names no policy".into(),
                self.gateway.revision(),
            ),
            ConfigPolicy::NotChanged { applied, revision } => {
                let message = if self.gateway.config_differs() == Some(true) {
                    format!(
                        "the config's policy has not changed since it was applied (revision \
                         {applied}): not applied again, so the changes made since stay \
                         (revision {revision} runs; --force applies the file's)"
                    )
                } else {
                    format!("the config's policy runs (revision {revision})")
                };
                policy(ReloadOutcome::Unchanged, message, revision)
            }
            ConfigPolicy::Applied {
                revision,
                unchanged: true,
                ..
            } => policy(
                ReloadOutcome::Unchanged,
                format!("the store holds the config's policy already (revision {revision})"),
                revision,
            ),
            ConfigPolicy::Applied {
                revision, forced, ..
            } => policy(
                ReloadOutcome::Applied,
                format!(
                    "the config's policy is revision {revision}{}",
                    if forced { " (forced)" } else { "" }
                ),
                revision,
            ),
            ConfigPolicy::Refused { revision, rollouts } => ReloadedPolicy {
                outcome: ReloadOutcome::Refused,
                message: format!(
                    "not applied: a rollout is in progress on {} and the config's policy would \
                     replace it; --force applies it anyway (revision {revision} runs)",
                    rollouts.join(", ")
                ),
                revision,
                rollouts,
            },
        }
    }
}

/// `connect 2s, upstream_response 30s, idle 1m, client_body 30s, upstream_body 1m`.
fn timeouts_text(config: &Config) -> String {
    let t = &config.timeouts;
    let d = |d: Duration| humantime::format_duration(d).to_string();
    format!(
        "connect {}, upstream_response {}, idle {}, client_body {}, upstream_body {}",
        d(t.connect),
        d(t.upstream_response),
        d(t.idle),
        d(t.client_body),
        d(t.upstream_body)
    )
}

/// The settings that differ between `current` and `new` and that only a restart applies, by
/// their config names.
fn restart_needed(current: &Config, new: &Config) -> Vec<String> {
    let differs = [
        ("listen", current.listen != new.listen),
        ("store", current.store != new.store),
        ("cache", current.cache != new.cache),
        ("client_ip", current.client_ip != new.client_ip),
        (
            "timeouts.header",
            current.timeouts.header != new.timeouts.header,
        ),
        (
            "timeouts.shutdown",
            current.timeouts.shutdown != new.timeouts.shutdown,
        ),
        (
            "max_header_bytes",
            current.max_header_bytes != new.max_header_bytes,
        ),
        (
            "listen_backlog",
            current.listen_backlog != new.listen_backlog,
        ),
        (
            "max_connections",
            current.max_connections != new.max_connections,
        ),
        (
            "reload_interval",
            current.reload_interval != new.reload_interval,
        ),
        (
            "version_header",
            current.version_header != new.version_header,
        ),
        (
            "response_version_header",
            current.response_version_header != new.response_version_header,
        ),
        ("workers", current.workers != new.workers),
        ("history", current.history != new.history),
        ("metrics", current.metrics != new.metrics),
        ("access_log", current.access_log != new.access_log),
        ("admin", current.admin != new.admin),
        ("tls", current.tls.is_some() != new.tls.is_some()),
        (
            "tls.listen",
            matches!((&current.tls, &new.tls), (Some(c), Some(n)) if c.listen != n.listen),
        ),
        (
            "tls.redirect_http",
            matches!((&current.tls, &new.tls), (Some(c), Some(n)) if c.redirect_http != n.redirect_http),
        ),
        (
            "tls.watch_interval",
            matches!((&current.tls, &new.tls), (Some(c), Some(n)) if c.watch_interval != n.watch_interval),
        ),
        ("http2", current.http2 != new.http2),
    ];
    differs
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Writes what a reload did to the log: one line per part, at the level its outcome deserves.
pub fn log_reloaded(trigger: &str, r: &Reloaded) {
    for (part, outcome, message) in r.parts() {
        match outcome {
            ReloadOutcome::Applied | ReloadOutcome::Unchanged => {
                tracing::info!(%outcome, "{trigger}: {part}: {message}")
            }
            ReloadOutcome::Refused => tracing::warn!(%outcome, "{trigger}: {part}: {message}"),
            ReloadOutcome::Failed => tracing::error!(%outcome, "{trigger}: {part}: {message}"),
        }
    }
    if !r.restart_needed.is_empty() {
        tracing::warn!(
            "{trigger}: changed in the config, applied only by a restart: {}",
            r.restart_needed.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        config::parse(text, Path::new("g.toml")).expect("a valid config")
    }

    const BASE: &str =
        "listen = [\"127.0.0.1:8080\"]\n[[upstreams]]\nname = \"a\"\nservers = [\"h:1\"]\n";

    #[test]
    fn settings_only_a_restart_applies_are_named_by_their_config_names() {
        let before = config(BASE);
        assert!(restart_needed(&before, &config(BASE)).is_empty());
        let after = config(&BASE.replace("8080", "8081").replace(
            "[[upstreams]]",
            "version_header = \"X-V\"\n[timeouts]\nheader = \"3s\"\nconnect = \"1s\"\n[cache]\nttl = \"5s\"\n[[upstreams]]",
        ));
        // The connect timeout is reloaded with the upstreams: not named.
        assert_eq!(
            restart_needed(&before, &after),
            vec!["listen", "cache", "timeouts.header", "version_header"]
        );
        assert_eq!(
            timeouts_text(&after),
            "connect 1s, upstream_response 30s, idle 1m, client_body 30s, upstream_body 1m"
        );
    }

    #[test]
    fn tls_settings_other_than_the_certificates_and_http2_limits_need_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let pem = crate::proxy::tls::testing_pair(&["a.example"]);
        std::fs::write(dir.path().join("site.pem"), &pem.cert).unwrap();
        std::fs::write(dir.path().join("site.key"), &pem.key).unwrap();
        let path = dir.path().join("g.toml");
        let parse = |text: String| config::parse(&text, &path).expect("a valid config");
        let tls = |extra: &str| {
            format!(
                "{BASE}[tls]\nlisten = [\"127.0.0.1:8443\"]\n\
                 certs = [{{ cert = \"site.pem\", key = \"site.key\" }}]\n{extra}"
            )
        };
        let before = parse(tls(""));
        assert!(restart_needed(&before, &parse(tls(""))).is_empty());
        let after = parse(tls(
            "redirect_http = true\nwatch_interval = \"5s\"\n[http2]\nmax_concurrent_streams = 10\n",
        ));
        assert_eq!(
            restart_needed(&before, &after),
            vec!["tls.redirect_http", "tls.watch_interval", "http2"]
        );
        assert_eq!(
            restart_needed(&before, &parse(BASE.to_string())),
            vec!["tls"]
        );
    }
}
