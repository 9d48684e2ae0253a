//! What `docs/rollouts.md` and `docs/config.md` say about rollouts in numbers, checked against the
//! code that makes those numbers, so that the docs cannot drift from it:
//! - the table of "how many requests it takes" is recomputed with
//!   [`graygate::rollout::requests_to_detect`], row by row, and the borderline case's "at most about
//!   45% of windows" with [`detection_chance`];
//! - every default in the settings tables is written into a plan (or the config) and must give
//!   exactly the default plan, analysis settings and driver settings; and every setting has a row;
//! - the mirror's defaults in docs/config.md are those of a mirror written with its required keys.
//!
//! A table is found by the HTML comment on the line before it (`<!-- checked: NAME ... -->`), so that moving
//! it around the page keeps it checked, and removing the marker fails the test.

use graygate::gateway::DriverConfig;
use graygate::rollout::analysis::detection_chance;
use graygate::rollout::{requests_to_detect, AnalysisSettings, RolloutDoc};
use std::time::Duration;

const ROLLOUTS: &str = include_str!("../../docs/rollouts.md");
const CONFIG: &str = include_str!("../../docs/config.md");

/// The body rows of the first markdown table after `marker` in `doc`, each as its trimmed cells.
fn table_after(doc: &str, file: &str, marker: &str) -> Vec<Vec<String>> {
    // `<!-- checked: plan defaults (tests/e2e/doc_figures.rs) -->`: the name, then anything.
    let marker = format!("<!-- checked: {marker}");
    let start = doc
        .find(&format!("{marker} "))
        .or_else(|| doc.find(&format!("{marker}-->")))
        .unwrap_or_else(|| panic!("{file} has no `{marker} ... -->` before its table"));
    let rows: Vec<Vec<String>> = doc[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2) // the header and its |---| line
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            l.split('|').map(|c| c.trim().to_string()).collect()
        })
        .collect();
    assert!(
        !rows.is_empty(),
        "{file}: the table after `{marker}` is empty"
    );
    rows
}

/// The text between the first pair of backticks of `cell`: `` `"5m"` `` -> `"5m"`.
fn code(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// `1%` -> 0.01.
fn share(cell: &str) -> f64 {
    let percent: f64 = cell
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("`{cell}` is not a percentage"));
    percent / 100.0
}

#[test]
fn requests_to_detect_figures_are_what_the_code_computes() {
    let rows = table_after(ROLLOUTS, "docs/rollouts.md", "requests_to_detect");
    assert!(rows.len() >= 6, "{rows:?}");
    for row in rows {
        let [stable, canary, written, requests] = &row[..] else {
            panic!("a row of the requests table has four cells: {row:?}");
        };
        // `defaults`, or settings written as `key = value` in backticks.
        let mut toml = String::new();
        if written != "defaults" {
            for part in written.split(", ") {
                let setting = code(part).unwrap_or_else(|| panic!("`{part}` is not `key = value`"));
                toml.push_str(setting);
                toml.push('\n');
            }
        }
        let settings: AnalysisSettings =
            toml::from_str(&toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
        let wanted: Option<u64> = if requests.starts_with("never") {
            None
        } else {
            Some(
                requests
                    .replace(',', "")
                    .parse()
                    .unwrap_or_else(|_| panic!("`{requests}` is not a number of requests")),
            )
        };
        assert_eq!(
            requests_to_detect(share(stable), share(canary), &settings),
            wanted,
            "{stable} -> {canary} with {written}"
        );
    }
}

/// 1% -> 2% with the defaults sits on both edges (2x and 1 point): however many requests, a window
/// fails at most about 45% of the time, as the doc says.
#[test]
fn the_borderline_case_fails_at_most_about_45_percent_of_windows() {
    let phrase = "at most about 45%";
    assert!(ROLLOUTS.contains(phrase), "docs/rollouts.md: `{phrase}`");
    let defaults = AnalysisSettings::default();
    let chances: Vec<f64> = [1_000, 3_000, 10_000, 100_000, 1_000_000]
        .into_iter()
        .map(|n| detection_chance(0.01, 0.02, n, &defaults))
        .collect();
    let most = chances.iter().cloned().fold(0.0, f64::max);
    assert!((0.40..=0.46).contains(&most), "{chances:?}");
}

/// Checks a table of settings (`| \`key\` | \`default\` | ... |`) against the defaults: every row's
/// default, written into `base` under its key, must give `default`; and every key of `keys` has a
/// row. `required` rows (no default) are only checked to be in `keys`.
fn check_settings<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    rows: &[Vec<String>],
    file: &str,
    write: impl Fn(&str, &str) -> String,
    default: &T,
    keys: &[String],
) {
    let mut seen = Vec::new();
    for row in rows {
        let key = code(&row[0]).unwrap_or_else(|| panic!("{file}: `{}` is not a key", row[0]));
        assert!(keys.iter().any(|k| k == key), "{file}: no setting `{key}`");
        seen.push(key.to_string());
        if row[1] == "required" {
            continue;
        }
        let value = code(&row[1]).unwrap_or_else(|| panic!("{file}: {key}: default `{}`", row[1]));
        let text = write(key, value);
        let written: T = toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {text}: {e}"));
        assert_eq!(
            &written, default,
            "{file}: the default of `{key}` is not `{value}`"
        );
    }
    for key in keys {
        assert!(seen.contains(key), "{file}: no row for the setting `{key}`");
    }
}

/// The keys of a value's JSON object.
fn keys_of(value: &impl serde::Serialize) -> Vec<String> {
    match serde_json::to_value(value).expect("serializes") {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn every_plan_and_analysis_setting_has_its_default_in_both_docs() {
    let default = RolloutDoc::new("v2");
    // Every field an operator writes: the optional ones shown too; status and parked_rules are
    // graygate's own.
    let mut every = default.clone();
    every.dry_run = true;
    every.cohort = vec!["staff".into()];
    let plan_keys: Vec<String> = keys_of(&every)
        .into_iter()
        .filter(|k| k != "analysis")
        .collect();
    let analysis_keys = keys_of(&AnalysisSettings::default());
    for (doc, file) in [(ROLLOUTS, "docs/rollouts.md"), (CONFIG, "docs/config.md")] {
        check_settings(
            &table_after(doc, file, "plan defaults"),
            file,
            |key, value| {
                if key == "version" {
                    format!("version = {value}")
                } else {
                    format!("version = \"v2\"\n{key} = {value}")
                }
            },
            &default,
            &plan_keys,
        );
        check_settings(
            &table_after(doc, file, "analysis defaults"),
            file,
            |key, value| format!("{key} = {value}"),
            &AnalysisSettings::default(),
            &analysis_keys,
        );
    }
}

#[test]
fn the_driver_settings_have_their_defaults_in_the_config_reference() {
    let rows = table_after(CONFIG, "docs/config.md", "[rollouts] defaults");
    let defaults = DriverConfig::default();
    let mut seen = Vec::new();
    for row in &rows {
        let key = code(&row[0]).expect("a key");
        let value = code(&row[1]).expect("a default");
        let value: Duration = humantime::parse_duration(value.trim_matches('"'))
            .unwrap_or_else(|e| panic!("`{key}` default `{value}`: {e}"));
        let default = match key {
            "tick" => defaults.tick,
            "lease" => defaults.lease,
            other => panic!("docs/config.md: no [rollouts] setting `{other}`"),
        };
        assert_eq!(value, default, "the default of [rollouts] {key}");
        seen.push(key);
    }
    assert_eq!(seen, ["tick", "lease"]);
}

/// The mirror defaults docs/config.md gives are the ones a mirror written with only its
/// required keys gets, and the table lists every key.
#[test]
fn the_mirror_settings_have_their_defaults_in_the_config_reference() {
    use graygate::policy::mirror::MirrorDoc;
    let rows = table_after(CONFIG, "docs/config.md", "mirror defaults");
    let defaults: MirrorDoc = toml::from_str("version = \"canary\"\npercent = 10").unwrap();
    let mut seen = Vec::new();
    for row in &rows {
        let key = code(&row[0]).expect("a key");
        let written = row[1].as_str();
        let matches = match key {
            "version" | "percent" => written == "required",
            "methods" => code(written) == Some(&format!("{:?}", defaults.methods)[..]),
            "max_body" => code(written) == Some(&format!("{:?}", defaults.max_body)[..]),
            "max_in_flight" => code(written) == Some(&defaults.max_in_flight.to_string()[..]),
            "timeout" => {
                code(written)
                    == Some(&format!("\"{}\"", humantime::format_duration(defaults.timeout))[..])
            }
            "compare" => code(written) == Some(&defaults.compare.to_string()[..]),
            other => panic!("docs/config.md: no mirror setting `{other}`"),
        };
        assert!(
            matches,
            "docs/config.md: the default of mirror {key}: {written}"
        );
        seen.push(key);
    }
    assert_eq!(
        seen,
        [
            "version",
            "percent",
            "methods",
            "max_body",
            "max_in_flight",
            "timeout",
            "compare"
        ]
    );
}
