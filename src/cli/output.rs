//! How `graygate ctl` prints answers: aligned tables and one-line summaries, or the API's JSON.

use serde_json::Value;

/// Prints answers in the chosen mode.
pub struct Printer {
    /// Print the API's JSON (pretty) instead of tables.
    pub json: bool,
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

fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A percentage without trailing zeros: `10`, `12.5`.
fn pct(w: f64) -> String {
    let s = format!("{w:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string() + "%"
}

/// `header X-User-Id` for a split's `by`.
fn identity(by: &Value) -> String {
    match by.as_object().and_then(|o| o.iter().next()) {
        Some((k, Value::Bool(true))) => k.clone(),
        Some((k, v)) => format!("{k} {}", v.as_str().unwrap_or_default()),
        None => "random".to_string(),
    }
}

/// Weights of a split as `stable=90% canary=10%`, with stable getting what is left.
fn split_text(stable: &str, split: &Value) -> String {
    let weights = split.get("weights").and_then(Value::as_object);
    let given: f64 = weights
        .map(|w| w.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    let mut parts = vec![format!("{stable}={}", pct((100.0 - given).max(0.0)))];
    for (v, w) in weights.into_iter().flatten() {
        parts.push(format!("{v}={}", pct(w.as_f64().unwrap_or(0.0))));
    }
    let mut out = parts.join(" ");
    if let Some(by) = split.get("by").filter(|b| !b.is_null()) {
        out.push_str(&format!(" (sticky by {})", identity(by)));
    } else if split.is_object() {
        out.push_str(" (random per request)");
    }
    out
}

impl Printer {
    /// The JSON, pretty, in any mode (documents).
    pub fn pretty(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// `line`, or the JSON.
    pub fn plain(&self, v: &Value, line: &str) {
        if self.json {
            self.pretty(v);
        } else {
            println!("{line}");
        }
    }

    /// A change: `revision N: <what>`, or the JSON.
    pub fn done(&self, v: &Value, what: &str) {
        let revision = text(v, "/revision");
        self.plain(v, &format!("revision {revision}: {what}"));
    }

    pub fn status(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        let store = if v.pointer("/store/degraded") == Some(&Value::Bool(true)) {
            format!("DEGRADED ({})", text(v, "/store/last_error"))
        } else {
            "healthy".to_string()
        };
        println!(
            "revision {}, store {}: {store}",
            text(v, "/revision"),
            text(v, "/store/kind")
        );
        let mut rows = Vec::new();
        let mut notes = Vec::new();
        for s in v
            .get("services")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = text(s, "/name");
            let stable = text(s, "/stable");
            let rollback_to = text(s, "/rollback_to");
            let weights = s.pointer("/split/weights").and_then(Value::as_object);
            let given: f64 = weights
                .map(|w| w.values().filter_map(Value::as_f64).sum())
                .unwrap_or(0.0);
            // Stable first, then the others by name.
            let mut versions: Vec<(&String, &Value)> = s
                .get("versions")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .collect();
            versions.sort_by_key(|(v, _)| **v != stable);
            for (version, upstream) in versions {
                let role = if *version == stable {
                    "stable"
                } else if *version == rollback_to {
                    "rollback target"
                } else {
                    ""
                };
                let weight = if *version == stable {
                    pct((100.0 - given).max(0.0))
                } else {
                    weights
                        .and_then(|w| w.get(version))
                        .and_then(Value::as_f64)
                        .map(pct)
                        .unwrap_or_else(|| "0%".to_string())
                };
                let traffic = s.pointer(&format!("/traffic/{version}"));
                rows.push(vec![
                    name.clone(),
                    version.clone(),
                    upstream.as_str().unwrap_or_default().to_string(),
                    role.to_string(),
                    weight,
                    traffic.map(|t| text(t, "/requests")).unwrap_or_default(),
                    traffic.map(|t| text(t, "/per_second")).unwrap_or_default(),
                ]);
            }
            let rules: Vec<String> = s
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| format!("{} -> {}", text(r, "/name"), text(r, "/version")))
                .collect();
            if !rules.is_empty() {
                notes.push(format!("rules of {name}, in order: {}", rules.join(", ")));
            }
            if let Some(by) = s.pointer("/split/by").filter(|b| !b.is_null()) {
                notes.push(format!("split of {name}: sticky by {}", identity(by)));
            }
        }
        println!();
        println!(
            "{}",
            table(
                &["SERVICE", "VERSION", "UPSTREAM", "ROLE", "WEIGHT", "REQUESTS", "PER_SEC"],
                &rows
            )
        );
        for note in notes {
            println!("{note}");
        }
    }

    pub fn routes(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        let rows: Vec<Vec<String>> = v
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| {
                let hosts: Vec<String> = r
                    .get("hosts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                vec![
                    text(r, "/name"),
                    if hosts.is_empty() {
                        "*".into()
                    } else {
                        hosts.join(",")
                    },
                    r.get("path_prefix")
                        .and_then(Value::as_str)
                        .unwrap_or("/")
                        .to_string(),
                    text(r, "/service"),
                ]
            })
            .collect();
        println!("{}", table(&["NAME", "HOSTS", "PATH", "SERVICE"], &rows));
    }

    pub fn services(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        let rows: Vec<Vec<String>> = v
            .get("services")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|s| {
                let versions: Vec<String> = s
                    .get("versions")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, u)| format!("{k}->{}", u.as_str().unwrap_or_default()))
                    .collect();
                let rules = s.get("rules").and_then(Value::as_array).map_or(0, Vec::len);
                let stable = text(s, "/stable");
                let split = s.get("split").filter(|x| !x.is_null());
                vec![
                    text(s, "/name"),
                    stable.clone(),
                    versions.join(" "),
                    rules.to_string(),
                    split
                        .map(|x| split_text(&stable, x))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["NAME", "STABLE", "VERSIONS", "RULES", "SPLIT"], &rows)
        );
    }

    pub fn versions(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        let stable = text(v, "/stable");
        let rows: Vec<Vec<String>> = v
            .get("versions")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, upstream)| {
                vec![
                    name.clone(),
                    upstream.as_str().unwrap_or_default().to_string(),
                    if *name == stable {
                        "stable".into()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        println!("{}", table(&["VERSION", "UPSTREAM", "ROLE"], &rows));
    }

    pub fn rules(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        let rows: Vec<Vec<String>> = v
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    i.to_string(),
                    text(r, "/name"),
                    text(r, "/version"),
                    r.get("when").map(Value::to_string).unwrap_or_default(),
                ]
            })
            .collect();
        println!("{}", table(&["#", "NAME", "VERSION", "WHEN"], &rows));
    }

    pub fn weights(&self, v: &Value) {
        let service = text(v, "/service");
        let stable = text(v, "/stable");
        let split = v.get("split").cloned().unwrap_or(Value::Null);
        let mut line = format!("{service}: {}", split_text(&stable, &split));
        if let Some(revision) = v.get("revision") {
            line = format!("revision {revision}: {line}");
        }
        self.plain(v, &line);
    }

    pub fn entries(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        let rows: Vec<Vec<String>> = v
            .get("entries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                let expires = match e.get("expires_at").and_then(Value::as_str) {
                    Some(at) => format!("{at} (in {}s)", text(e, "/ttl_seconds")),
                    None => "never".into(),
                };
                vec![text(e, "/key"), text(e, "/value"), expires]
            })
            .collect();
        println!("{}", table(&["KEY", "VALUE", "EXPIRES"], &rows));
    }

    pub fn explain(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        if v.get("version").is_none_or(Value::is_null) {
            println!("{}", text(v, "/reason"));
            return;
        }
        let rows = vec![
            vec!["version".into(), text(v, "/version")],
            vec!["reason".into(), text(v, "/reason")],
            vec!["upstream".into(), text(v, "/upstream")],
            vec!["service".into(), text(v, "/service")],
            vec!["stable".into(), text(v, "/stable")],
            vec!["route".into(), text(v, "/route")],
            vec!["client ip".into(), text(v, "/client_ip")],
            vec!["revision".into(), text(v, "/revision")],
        ];
        for row in rows {
            println!("{:<10} {}", row[0], row[1]);
        }
    }

    pub fn history(&self, v: &Value) {
        if self.json {
            return self.pretty(v);
        }
        let rows: Vec<Vec<String>> = v
            .get("entries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                vec![
                    text(e, "/revision"),
                    text(e, "/time"),
                    text(e, "/actor"),
                    text(e, "/summary"),
                ]
            })
            .collect();
        println!("{}", table(&["REVISION", "TIME", "ACTOR", "CHANGE"], &rows));
    }
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
        let split = json!({"weights": {"canary": 10.0}, "by": {"header": "X-User-Id"}});
        assert_eq!(
            split_text("stable", &split),
            "stable=90% canary=10% (sticky by header X-User-Id)"
        );
        assert_eq!(split_text("stable", &Value::Null), "stable=100%");
        assert_eq!(pct(12.5), "12.5%");
    }
}
