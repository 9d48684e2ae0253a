//! How `graygate ctl` prints answers: aligned tables and one-line summaries made from the wire
//! types, or the API's JSON as it came (`--json`).
//!
//! Nothing here panics on a closed pipe (`graygate ctl status | head -1`): every write returns
//! its error, and a broken pipe ends the command quietly.

use super::client::Answer;
use super::CtlError;
use crate::api::{
    EntryList, Explanation, History, HistoryOne, Reloaded, Revisioned, RolloutView, RouteList,
    RuleList, ServerHealthState, ServiceList, Status, VersionFigures, VersionHealth, VersionList,
    Weights,
};
use crate::policy::model::{IdentityDoc, SplitDoc};
use crate::policy::{buckets_of_percent, BUCKETS};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;

/// Prints answers in the chosen mode.
pub struct Printer {
    /// Print the API's JSON (pretty) instead of tables.
    pub json: bool,
}

impl Printer {
    /// Writes `text` and a newline to stdout.
    pub fn line(&self, text: &str) -> Result<(), CtlError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(CtlError::Output)
    }

    /// The JSON as the API sent it, pretty, in any mode (documents).
    pub fn pretty(&self, raw: &Value) -> Result<(), CtlError> {
        self.line(&serde_json::to_string_pretty(raw).unwrap_or_default())
    }

    /// `text` made from the answer, or its JSON.
    pub fn show<T>(
        &self,
        answer: &Answer<T>,
        text: impl FnOnce(&T) -> String,
    ) -> Result<(), CtlError> {
        if self.json {
            self.pretty(&answer.raw)
        } else {
            self.line(&text(&answer.body))
        }
    }

    /// A change: `revision N: <what>` (`revision N (unchanged): <what>` when it changed
    /// nothing), or the JSON.
    pub fn done<T>(&self, answer: &Answer<Revisioned<T>>, what: &str) -> Result<(), CtlError> {
        self.show(answer, |a| format!("{}: {what}", revision(a)))
    }
}

/// `revision N`, or `revision N (unchanged)` for a change that changed nothing: the revision an
/// answer is about, as every line of ctl names it.
pub fn revision<T>(answer: &Revisioned<T>) -> String {
    if answer.unchanged {
        format!("revision {} (unchanged)", answer.revision)
    } else {
        format!("revision {}", answer.revision)
    }
}

/// Writes `text` and a newline to stderr; a closed stderr is not worth a panic.
pub fn note(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Columns aligned on the widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A number as the API's JSON writes it (`12.3`, `0.0`).
fn number(n: f64) -> String {
    serde_json::Number::from_f64(n).map_or_else(String::new, |n| n.to_string())
}

/// Compact JSON with sorted keys, as the API's JSON reads.
fn compact(value: &impl Serialize) -> String {
    serde_json::to_value(value).map_or_else(|_| String::new(), |v| v.to_string())
}

/// A weight as the share routing gives it (two decimals, rounded as the policy rounds it),
/// without trailing zeros: `10`, `12.5`.
pub fn pct(w: f64) -> String {
    pct_of_buckets(buckets_of_percent(w))
}

/// `buckets` of [`BUCKETS`] as a percentage without trailing zeros.
fn pct_of_buckets(buckets: u32) -> String {
    let s = format!("{}.{:02}", buckets / 100, buckets % 100);
    s.trim_end_matches('0').trim_end_matches('.').to_string() + "%"
}

/// What the stable version keeps of a split: every bucket the other weights leave.
fn stable_pct(split: Option<&SplitDoc>) -> String {
    let given: u32 = split.map_or(0, |s| {
        s.weights.values().map(|w| buckets_of_percent(*w)).sum()
    });
    pct_of_buckets(BUCKETS.saturating_sub(given))
}

/// `header X-User-Id` for a split's `by`.
fn identity(by: &IdentityDoc) -> String {
    if by.client_ip == Some(true) {
        return "client_ip".to_string();
    }
    let named = [
        ("cookie", &by.cookie),
        ("header", &by.header),
        ("query", &by.query),
    ];
    named
        .iter()
        .find_map(|(kind, name)| name.as_ref().map(|n| format!("{kind} {n}")))
        .unwrap_or_else(|| "random".to_string())
}

/// Weights of a split as `stable=90% canary=10%`, with stable getting what is left.
fn split_text(stable: &str, split: Option<&SplitDoc>) -> String {
    let mut parts = vec![format!("{stable}={}", stable_pct(split))];
    for (v, w) in split.into_iter().flat_map(|s| &s.weights) {
        parts.push(format!("{v}={}", pct(*w)));
    }
    let mut out = parts.join(" ");
    match split {
        Some(SplitDoc { by: Some(by), .. }) => {
            out.push_str(&format!(" (sticky by {})", identity(by)))
        }
        Some(_) => out.push_str(" (random per request)"),
        None => {}
    }
    out
}

/// `ctl status`.
pub fn status(v: &Revisioned<Status>) -> String {
    let s = &v.body;
    let store = if s.store.degraded {
        format!(
            "DEGRADED ({})",
            s.store.last_error.as_deref().unwrap_or_default()
        )
    } else {
        "healthy".to_string()
    };
    let store = match &s.store.invalidation {
        Some(mode) => format!("{store}, invalidations: {mode}"),
        None => store,
    };
    let mut out = format!("revision {}, store {}: {store}\n", v.revision, s.store.kind);
    if let Some(i) = &s.instance {
        if i.source != "store" {
            out.push_str(&format!(
                "policy from the {} (the store could not give it), instance {}\n",
                i.source, i.id
            ));
        }
        if let Some(d) = &i.diverged {
            out.push_str(&format!(
                "DIVERGED: cannot apply the store's revision {}: {}\n",
                d.revision, d.reason
            ));
        }
        if i.store == "behind" {
            out.push_str("the store is BEHIND this instance: see graygate ctl fleet\n");
        }
    }
    out.push('\n');
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    // The health column only when there is something to say: active checks somewhere, or a
    // server out of service.
    let show_health = s.services.iter().any(|svc| {
        svc.health.values().any(|h| {
            h.checked
                || h.servers.iter().any(|x| {
                    matches!(
                        x.state,
                        ServerHealthState::Down | ServerHealthState::Ejected
                    )
                })
        })
    });
    for svc in &s.services {
        // Stable first, then the others by name.
        let mut versions: Vec<(&String, &String)> = svc.versions.iter().collect();
        versions.sort_by_key(|(v, _)| **v != svc.stable);
        for (version, upstream) in versions {
            let role = if *version == svc.stable {
                "stable"
            } else if Some(version) == svc.rollback_to.as_ref() {
                "rollback target"
            } else {
                ""
            };
            let weight = if *version == svc.stable {
                stable_pct(svc.split.as_ref())
            } else {
                svc.split
                    .as_ref()
                    .and_then(|x| x.weights.get(version))
                    .map_or_else(|| "0%".to_string(), |w| pct(*w))
            };
            let traffic = svc.traffic.get(version);
            let mut row = vec![
                svc.name.clone(),
                version.clone(),
                upstream.clone(),
                role.to_string(),
                weight,
                traffic.map(|t| t.requests.to_string()).unwrap_or_default(),
                traffic
                    .and_then(|t| t.per_second)
                    .map(number)
                    .unwrap_or_default(),
            ];
            if show_health {
                let health = svc.health.get(version);
                row.push(health.map(health_text).unwrap_or_default());
                if let Some(h) = health {
                    notes.extend(health_notes(&svc.name, version, &svc.stable, h));
                }
            }
            rows.push(row);
        }
        let rules: Vec<String> = svc
            .rules
            .iter()
            .map(|r| format!("{} -> {}", r.name, r.version))
            .collect();
        if !rules.is_empty() {
            notes.push(format!(
                "rules of {}, in order: {}",
                svc.name,
                rules.join(", ")
            ));
        }
        if let Some(by) = svc.split.as_ref().and_then(|x| x.by.as_ref()) {
            notes.push(format!("split of {}: sticky by {}", svc.name, identity(by)));
        }
    }
    let mut header = vec![
        "SERVICE", "VERSION", "UPSTREAM", "ROLE", "WEIGHT", "REQUESTS", "PER_SEC",
    ];
    if show_health {
        header.push("HEALTH");
    }
    out.push_str(&table(&header, &rows));
    for note in notes {
        out.push('\n');
        out.push_str(&note);
    }
    out
}

/// A version's health in one word: `up` (every used server in service), `1/2 up`, or `DOWN`
/// (none: its requests go to stable).
fn health_text(h: &VersionHealth) -> String {
    let used = h
        .servers
        .iter()
        .filter(|s| s.state != ServerHealthState::Drained)
        .count();
    if h.in_service == 0 && used > 0 {
        "DOWN".to_string()
    } else if h.in_service >= used {
        "up".to_string()
    } else {
        format!("{}/{used} up", h.in_service)
    }
}

/// One line per server out of service, and one when the version has none left.
fn health_notes(service: &str, version: &str, stable: &str, h: &VersionHealth) -> Vec<String> {
    let mut notes = Vec::new();
    for s in &h.servers {
        let state = match s.state {
            ServerHealthState::Down => "down",
            ServerHealthState::Ejected => "ejected",
            ServerHealthState::Up | ServerHealthState::Drained => continue,
        };
        let mut note = format!("{service} {version}: {} {state}", s.server);
        if let Some(since) = &s.since {
            note.push_str(&format!(" since {since}"));
        }
        if let Some(until) = &s.until {
            note.push_str(&format!(" until {until}"));
        }
        if let Some(reason) = &s.reason {
            note.push_str(&format!(": {reason}"));
        }
        notes.push(note);
    }
    if h.in_service == 0 && version != stable && !h.servers.is_empty() {
        notes.push(format!(
            "{service} {version}: no server in service: its requests go to {stable}"
        ));
    }
    notes
}

/// `ctl routes list`.
pub fn routes(v: &Revisioned<RouteList>) -> String {
    let rows: Vec<Vec<String>> = v
        .body
        .routes
        .iter()
        .map(|r| {
            vec![
                r.name.clone().unwrap_or_default(),
                if r.hosts.is_empty() {
                    "*".into()
                } else {
                    r.hosts.join(",")
                },
                r.path_prefix.clone().unwrap_or_else(|| "/".into()),
                r.service.clone(),
            ]
        })
        .collect();
    table(&["NAME", "HOSTS", "PATH", "SERVICE"], &rows)
}

/// `ctl services list`.
pub fn services(v: &Revisioned<ServiceList>) -> String {
    let rows: Vec<Vec<String>> = v
        .body
        .services
        .iter()
        .map(|s| {
            let versions: Vec<String> = s
                .versions
                .iter()
                .map(|(k, u)| format!("{k}->{u}"))
                .collect();
            vec![
                s.name.clone(),
                s.stable.clone(),
                versions.join(" "),
                s.rules.len().to_string(),
                s.split
                    .as_ref()
                    .map_or_else(|| "-".into(), |x| split_text(&s.stable, Some(x))),
            ]
        })
        .collect();
    table(&["NAME", "STABLE", "VERSIONS", "RULES", "SPLIT"], &rows)
}

/// `ctl versions list`.
pub fn versions(v: &Revisioned<VersionList>) -> String {
    let rows: Vec<Vec<String>> = v
        .body
        .versions
        .iter()
        .map(|(name, upstream)| {
            vec![
                name.clone(),
                upstream.clone(),
                if *name == v.body.stable {
                    "stable".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table(&["VERSION", "UPSTREAM", "ROLE"], &rows)
}

/// `ctl rules list`.
pub fn rules(v: &Revisioned<RuleList>) -> String {
    let rows: Vec<Vec<String>> = v
        .body
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                i.to_string(),
                r.name.clone(),
                r.version.clone(),
                compact(&r.when),
            ]
        })
        .collect();
    table(&["#", "NAME", "VERSION", "WHEN"], &rows)
}

/// `ctl weights get|set`.
pub fn weights(v: &Revisioned<Weights>) -> String {
    let w = &v.body;
    format!(
        "{}: {}: {}",
        revision(v),
        w.service,
        split_text(&w.stable, w.split.as_ref())
    )
}

/// `ctl upstreams list`: one row per server, with where its upstream is defined.
pub fn upstreams(v: &Revisioned<crate::api::UpstreamList>) -> String {
    use crate::api::UpstreamSource;
    let mut rows = Vec::new();
    for u in &v.body.upstreams {
        let source = match (u.source, u.replaces_config) {
            (UpstreamSource::Config, _) => "config",
            (UpstreamSource::Policy, false) => "policy",
            (UpstreamSource::Policy, true) => "policy (replaces config)",
        };
        let proto = if u.tls {
            format!("{}+tls", u.protocol)
        } else {
            u.protocol.clone()
        };
        for (i, s) in u.servers.iter().enumerate() {
            let health = u
                .health
                .as_ref()
                .and_then(|h| h.servers.iter().find(|h| h.server == s.address))
                .map(|h| format!("{:?}", h.state).to_lowercase())
                .unwrap_or_else(|| "-".into());
            let first = i == 0;
            rows.push(vec![
                if first { u.name.clone() } else { String::new() },
                if first {
                    source.to_string()
                } else {
                    String::new()
                },
                if first { proto.clone() } else { String::new() },
                s.address.clone(),
                s.weight.to_string(),
                if s.drained { "yes" } else { "no" }.to_string(),
                health,
            ]);
        }
    }
    format!(
        "{}\n{}",
        revision(v),
        table(
            &["UPSTREAM", "SOURCE", "PROTOCOL", "SERVER", "WEIGHT", "DRAINED", "HEALTH"],
            &rows
        )
    )
}

/// `ctl list show`.
pub fn entries(v: &EntryList) -> String {
    let rows: Vec<Vec<String>> = v
        .entries
        .iter()
        .map(|e| {
            let expires = match &e.expires_at {
                Some(at) => format!(
                    "{at} (in {}s)",
                    e.ttl_seconds.map(|s| s.to_string()).unwrap_or_default()
                ),
                None => "never".into(),
            };
            vec![e.key.clone(), e.value.clone(), expires]
        })
        .collect();
    table(&["KEY", "VALUE", "EXPIRES"], &rows)
}

/// `ctl explain`.
pub fn explain(v: &Explanation) -> String {
    let (Some(version), Some(routed)) = (&v.version, &v.routed) else {
        return v.reason.clone();
    };
    let mut rows = vec![
        ("version", version.clone()),
        ("reason", v.reason.clone()),
        ("upstream", routed.upstream.clone().unwrap_or_default()),
        ("service", routed.service.clone()),
        ("stable", routed.stable.clone()),
        ("route", v.route.clone().unwrap_or_default()),
        ("client ip", v.client_ip.to_string()),
        ("revision", v.revision.to_string()),
    ];
    if let Some(note) = &routed.note {
        rows.insert(2, ("note", note.clone()));
    }
    if let Some(cookie) = &routed.set_cookie {
        rows.push(("set-cookie", cookie.clone()));
    }
    if let Some(m) = &routed.mirror {
        let copied = if m.mirrored { "copied" } else { "not copied" };
        rows.push(("mirror", format!("{} {copied}: {}", m.version, m.reason)));
    }
    if let Some(f) = &routed.fallback {
        // Right under the version: the answer comes from elsewhere.
        rows.insert(
            1,
            ("fallback", format!("{} answers: {}", f.version, f.reason)),
        );
    }
    let lines: Vec<String> = rows
        .iter()
        .map(|(label, value)| format!("{label:<10} {value}"))
        .collect();
    lines.join("\n")
}

/// `ctl reload`: one line per part of the config, then what needs a restart.
pub fn reloaded(r: &Reloaded) -> String {
    let rows: Vec<Vec<String>> = r
        .parts()
        .iter()
        .map(|(part, outcome, message)| {
            vec![part.to_string(), outcome.to_string(), message.to_string()]
        })
        .collect();
    let mut out = format!("config {} read again\n", r.config);
    out.push_str(&table(&["PART", "OUTCOME", "WHAT"], &rows));
    if !r.restart_needed.is_empty() {
        out.push_str(&format!(
            "\nchanged, applied only by a restart: {}",
            r.restart_needed.join(", ")
        ));
    }
    out
}

/// `ctl history`.
pub fn history(v: &Revisioned<History>) -> String {
    let rows: Vec<Vec<String>> = v
        .body
        .entries
        .iter()
        .map(|e| {
            vec![
                e.revision.to_string(),
                e.time.clone(),
                e.actor.clone(),
                e.summary.clone(),
            ]
        })
        .collect();
    let mut out = table(&["REVISION", "TIME", "ACTOR", "CHANGE"], &rows);
    // The next page starts below the oldest change shown.
    if let (Some(_), Some(oldest)) = (&v.body.next, v.body.entries.last()) {
        out.push_str(&format!(
            "\nolder changes: ctl history --before {} (or --all)",
            oldest.revision
        ));
    }
    out
}

/// `ctl history <revision>`: the change, then the documents before and after it.
pub fn history_one(v: &Revisioned<HistoryOne>) -> String {
    let e = &v.body.entry;
    let doc = |d| serde_json::to_string_pretty(d).unwrap_or_default();
    format!(
        "revision {} at {} by {}: {}\nbefore:\n{}\nafter:\n{}",
        e.revision,
        e.time,
        e.actor,
        e.summary,
        doc(&e.before),
        doc(&e.after)
    )
}

/// `web: v2 progressing at step 2/4 (25%): <reason>`
pub fn rollout_line(v: &RolloutView) -> String {
    match v.state {
        None => format!("{}: rollout of {} not started yet", v.service, v.version),
        Some(state) => format!(
            "{}: {} {state} at step {}/{} ({}): {}",
            v.service,
            v.version,
            v.step,
            v.steps,
            pct(v.weight),
            v.reason
        ),
    }
}

/// One version's window figures: `v2 512 requests, 5xx 0.2% (1), p50 1.2ms, p99 4.1ms`.
fn window_figures(f: &VersionFigures) -> String {
    let ms = |q: Option<f64>| q.map_or_else(|| "-".to_string(), |v| format!("{v}ms"));
    format!(
        "{} {} requests, errors {}% ({}), p50 {}, p99 {}",
        f.version,
        f.requests,
        number(f.error_percent),
        f.errors,
        ms(f.p50_ms),
        ms(f.p99_ms)
    )
}

/// `rollout status`: the line, the window, and the verdicts as a table.
pub fn rollout(v: &Revisioned<RolloutView>) -> String {
    let r = &v.body;
    let mut out = rollout_line(r);
    if let Some(since) = &r.since {
        out.push_str(&format!("\nsince {since}"));
    }
    if let Some(until) = &r.guard_until {
        out.push_str(&format!(", guard until {until}"));
    }
    if r.plan.dry_run {
        out.push_str(" (dry run: verdicts never abort)");
    }
    if let Some(w) = &r.window {
        out.push_str(&format!(
            "\nwindow {}s: canary {}\n{:>w$}stable {}",
            number((w.seconds * 10.0).round() / 10.0),
            window_figures(&w.canary),
            "",
            window_figures(&w.stable),
            w = format!("window {}s: ", number((w.seconds * 10.0).round() / 10.0)).len()
        ));
    }
    if r.failures > 0 {
        out.push_str(&format!("\nfailing windows in a row: {}", r.failures));
    }
    if r.verdicts.is_empty() {
        out.push_str("\nno verdict yet");
    } else {
        let rows: Vec<Vec<String>> = r
            .verdicts
            .iter()
            .map(|verdict| {
                let time = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(verdict.at_ms),
                )
                .to_string();
                let mut text = verdict.text.clone();
                if let Some(action) = &verdict.action {
                    text.push_str(&format!(" -> {action}"));
                }
                vec![
                    time,
                    format!("{} ({})", verdict.step + 1, pct(verdict.weight)),
                    outcome(verdict.outcome).to_string(),
                    text,
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["TIME", "STEP", "VERDICT", "FIGURES"], &rows));
    }
    out
}

/// A verdict's outcome as it is written.
fn outcome(o: crate::rollout::Outcome) -> &'static str {
    match o {
        crate::rollout::Outcome::Pass => "pass",
        crate::rollout::Outcome::Fail => "FAIL",
        crate::rollout::Outcome::Abort => "ABORT",
        crate::rollout::Outcome::NotEnoughData => "waiting",
    }
}

/// `graygate ctl fleet`: one line per instance; `*` marks the one that answered, and the last
/// column says what needs attention (diverged, lagging behind the store, the store behind it).
pub fn fleet(f: &crate::api::Fleet) -> String {
    let store = match f.revision {
        Some(r) => format!("store at revision {r}"),
        None => "store unreadable".to_string(),
    };
    let rows: Vec<Vec<String>> = f
        .instances
        .iter()
        .map(|i| {
            let mut notes = Vec::new();
            if let Some(d) = &i.diverged {
                notes.push(format!("DIVERGED at {}: {}", d.revision, d.reason));
            } else if f.revision.is_some_and(|r| i.revision < r) {
                notes.push("LAGGING".to_string());
            }
            if i.store != "healthy" {
                notes.push(format!("store {}", i.store));
            }
            if let Some(e) = i.snapshot.as_ref().and_then(|s| s.error.as_ref()) {
                notes.push(format!("snapshot: {e}"));
            }
            let snapshot = match &i.snapshot {
                Some(s) => s.revision.map_or("-".to_string(), |r| r.to_string()),
                None => "off".to_string(),
            };
            let this = if i.id == f.this { "*" } else { "" };
            vec![
                format!("{}{this}", i.id),
                i.revision.to_string(),
                i.source.clone(),
                snapshot,
                i.admin.clone().unwrap_or_else(|| "-".into()),
                i.version.clone(),
                i.last_seen.clone(),
                if notes.is_empty() {
                    "ok".to_string()
                } else {
                    notes.join("; ")
                },
            ]
        })
        .collect();
    format!(
        "{store}; {} live instance(s)\n{}",
        f.instances.len(),
        table(
            &[
                "INSTANCE",
                "REVISION",
                "SOURCE",
                "SNAPSHOT",
                "ADMIN",
                "VERSION",
                "LAST SEEN",
                "STATE"
            ],
            &rows
        )
        .trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER", "C"],
            &[
                vec!["xyz".into(), "1".into(), "last".into()],
                vec!["q".into(), "22".into(), "x".into()],
            ],
        );
        assert_eq!(t, "A    LONGER  C\nxyz  1       last\nq    22      x");
    }

    #[test]
    fn splits_read_like_the_operator_thinks() {
        let split: SplitDoc = serde_json::from_value(
            json!({"weights": {"canary": 10.0}, "by": {"header": "X-User-Id"}}),
        )
        .unwrap();
        assert_eq!(
            split_text("stable", Some(&split)),
            "stable=90% canary=10% (sticky by header X-User-Id)"
        );
        assert_eq!(split_text("stable", None), "stable=100%");
        let random: SplitDoc = serde_json::from_value(json!({"weights": {"b": 12.5}})).unwrap();
        assert_eq!(
            split_text("a", Some(&random)),
            "a=87.5% b=12.5% (random per request)"
        );
        assert_eq!(pct(12.5), "12.5%");
    }

    #[test]
    fn a_change_that_changed_nothing_says_so_beside_its_revision() {
        let w: Revisioned<Weights> = serde_json::from_value(json!({"revision": 4,
            "unchanged": true, "service": "web", "stable": "v1",
            "split": {"weights": {"v2": 0.0}}}))
        .unwrap();
        assert_eq!(
            weights(&w),
            "revision 4 (unchanged): web: v1=100% v2=0% (random per request)"
        );
        let changed = Revisioned::new(5, ());
        assert_eq!(revision(&changed), "revision 5");
    }

    /// A weight with more than two decimals is shown as routing rounds it, and the shares shown
    /// add up to 100% (`10.555` once showed as `stable=89.44% canary=10.55%`).
    #[test]
    fn shares_are_what_routing_gives_and_add_up() {
        for (weights, text) in [
            (json!({"canary": 10.555}), "stable=89.44% canary=10.56%"),
            (json!({"canary": 33.333}), "stable=66.67% canary=33.33%"),
            (
                json!({"b": 33.335, "c": 33.335}),
                "stable=33.32% b=33.34% c=33.34%",
            ),
            (json!({"canary": 0.004}), "stable=100% canary=0%"),
        ] {
            let split: SplitDoc = serde_json::from_value(json!({ "weights": weights })).unwrap();
            assert_eq!(
                split_text("stable", Some(&split)),
                format!("{text} (random per request)")
            );
        }
    }

    #[test]
    fn status_is_a_table_of_versions_with_notes() {
        let v: Revisioned<Status> = serde_json::from_value(json!({"revision": 7,
            "last_reload": null,
            "store": {"kind": "redis", "degraded": true, "since": null, "last_error": "down"},
            "services": [{"name": "web", "stable": "v2", "rollback_to": "v1",
                "versions": {"v1": "old", "v2": "new", "v3": "next"},
                "split": {"weights": {"v3": 10.0}, "by": {"client_ip": true}},
                "rules": [{"name": "beta", "version": "v3"}],
                "traffic": {"v2": {"requests": 5, "per_second": 0.0},
                            "v3": {"requests": 1, "per_second": null}}}]}))
        .unwrap();
        assert_eq!(
            status(&v),
            "revision 7, store redis: DEGRADED (down)\n\n\
             SERVICE  VERSION  UPSTREAM  ROLE             WEIGHT  REQUESTS  PER_SEC\n\
             web      v2       new       stable           90%     5         0.0\n\
             web      v1       old       rollback target  0%\n\
             web      v3       next                       10%     1\n\
             rules of web, in order: beta -> v3\n\
             split of web: sticky by client_ip"
        );
    }

    #[test]
    fn status_shows_health_when_there_is_something_to_say() {
        let v: Revisioned<Status> = serde_json::from_value(json!({"revision": 3,
            "last_reload": null,
            "store": {"kind": "embedded", "degraded": false, "since": null, "last_error": null},
            "services": [{"name": "web", "stable": "stable", "rollback_to": null,
                "versions": {"stable": "stable", "canary": "canary"},
                "split": {"weights": {"canary": 50.0}},
                "rules": [],
                "traffic": {"stable": {"requests": 9, "per_second": null},
                            "canary": {"requests": 4, "per_second": null}},
                "health": {
                    "canary": {"upstream": "canary", "checked": true, "in_service": 0,
                        "servers": [{"server": "127.0.0.1:9001", "state": "down",
                            "since": "2026-11-23T12:22:26Z",
                            "reason": "3 health checks failed in a row: GET /healthz: answered 503"}]},
                    "stable": {"upstream": "stable", "checked": false, "in_service": 1,
                        "servers": [{"server": "127.0.0.1:9000", "state": "up"},
                                    {"server": "127.0.0.1:9002", "state": "ejected",
                                     "until": "2026-11-23T12:22:36Z",
                                     "reason": "ejected for 10s: 5 failures in a row, the last: answered 502"}]}}}]}))
        .unwrap();
        assert_eq!(
            status(&v),
            "revision 3, store embedded: healthy\n\n\
             SERVICE  VERSION  UPSTREAM  ROLE    WEIGHT  REQUESTS  PER_SEC  HEALTH\n\
             web      stable   stable    stable  50%     9                  1/2 up\n\
             web      canary   canary            50%     4                  DOWN\n\
             web stable: 127.0.0.1:9002 ejected until 2026-11-23T12:22:36Z: ejected for 10s: 5 failures in a row, the last: answered 502\n\
             web canary: 127.0.0.1:9001 down since 2026-11-23T12:22:26Z: 3 health checks failed in a row: GET /healthz: answered 503\n\
             web canary: no server in service: its requests go to stable"
        );
    }

    #[test]
    fn explain_says_when_stable_answers_for_a_version_that_is_down() {
        let v: Explanation = serde_json::from_value(json!({"revision": 2, "method": "GET",
            "client_ip": "10.0.0.7", "route": "web", "service": "web", "version": "canary",
            "stable": "stable", "upstream": "canary", "reason": "split:random:12", "rule": null,
            "fallback": {"version": "stable",
                "reason": "no server of upstream `canary` is in service (127.0.0.1:9001 down: x)"}}))
        .unwrap();
        assert_eq!(
            explain(&v),
            "version    canary\n\
             fallback   stable answers: no server of upstream `canary` is in service (127.0.0.1:9001 down: x)\n\
             reason     split:random:12\n\
             upstream   canary\n\
             service    web\n\
             stable     stable\n\
             route      web\n\
             client ip  10.0.0.7\n\
             revision   2"
        );
    }

    #[test]
    fn explain_without_a_route_is_its_reason() {
        let v: Explanation = serde_json::from_value(json!({"revision": 1, "method": "GET",
            "client_ip": "127.0.0.1", "route": null, "version": null, "reason": "no route"}))
        .unwrap();
        assert_eq!(explain(&v), "no route");
    }
}
