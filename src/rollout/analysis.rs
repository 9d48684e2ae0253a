//! The verdict on one analysis window: the canary's figures against stable's over the same window
//! ([`judge`]), under the operator's [`AnalysisSettings`].
//!
//! A verdict is made of checks, each with its figures and a sentence a person can check against
//! them:
//! - **Hard guard** (first): the canary's error rate above `abort_error_rate` over at least
//!   `abort_min_requests` canary requests aborts at once. It needs no stable traffic and no
//!   significance: it is there for a canary that is plainly broken.
//! - **Samples**: with fewer than `min_requests` for either version the verdict is
//!   [`Outcome::NotEnoughData`]: the step waits; it never fails and never advances on too little.
//! - **Error rate**: the two-proportion z test ([`stats::two_proportion`]).
//! - **Latency**: p50 and p99 from the histograms, significance from the Mann–Whitney U test
//!   ([`stats::mann_whitney`]).
//!
//! Comparing with stable over the same window is what makes a threshold mean something: a
//! backend that always answers 2% errors, or a slow hour for everyone, is not the canary's doing.
//! So the error and latency checks fail only when three things hold together:
//! 1. **significance**: the difference is unlikely to be chance (p below 1 - confidence);
//! 2. **ratio**: the canary is at least `ratio` times worse than stable;
//! 3. **floor**: and worse by at least the floor in absolute terms (percentage points, or time),
//!    so that 0.01% against 0.002% does not abort a release.
//!
//! When a check passes although the canary looks worse, its text names the conditions that held
//! it back.
//!
//! Everything here is pure: figures in, verdict out.

use super::figures::Figures;
use super::stats;
use crate::policy::FieldPath;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// How an analysis judges a window. Every field has a default; written in TOML (the policy's
/// rollout) and JSON (the admin API, the store) with these names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisSettings {
    /// Requests each version needs in a window before there is any verdict but "not enough
    /// data". Default 100.
    pub min_requests: u64,
    /// The answers that count as errors: codes (`"503"`), ranges (`"500-599"`) or classes
    /// (`"5xx"`). Default `["5xx"]`. Also the name of the error rate in verdict texts.
    pub error_statuses: Vec<String>,
    /// How sure the error test must be that the canary's rate is higher (one-sided): a window
    /// fails only with p below `1 - error_confidence`. Default 0.99.
    pub error_confidence: f64,
    /// The canary's error rate must be at least this many times stable's to fail. Default 2.0.
    pub error_ratio: f64,
    /// ... and at least this many percentage points above it. Default 1.0.
    pub error_floor: f64,
    /// As `error_confidence`, for the latency test. Default 0.99.
    pub latency_confidence: f64,
    /// The canary's p50 or p99 must be at least this many times stable's to fail. Default 1.5.
    pub latency_ratio: f64,
    /// ... and at least this much slower (humantime text: `"10ms"`). Default 10 ms.
    #[serde(with = "humantime_serde")]
    pub latency_floor: Duration,
    /// Hard guard: a canary error rate above this percentage aborts at once. Default 20.0; 100
    /// turns the guard off.
    pub abort_error_rate: f64,
    /// ... once the canary has at least this many requests in the window. Default 50.
    pub abort_min_requests: u64,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            min_requests: 100,
            error_statuses: vec!["5xx".to_owned()],
            error_confidence: 0.99,
            error_ratio: 2.0,
            error_floor: 1.0,
            latency_confidence: 0.99,
            latency_ratio: 1.5,
            latency_floor: Duration::from_millis(10),
            abort_error_rate: 20.0,
            abort_min_requests: 50,
        }
    }
}

/// A setting that makes no sense: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// The field, from the settings' root (`error_statuses[1]`); join it to where the settings
    /// sit in a larger document.
    pub field: FieldPath,
    /// What is wrong, with the value that was given.
    pub message: String,
}

impl SettingsError {
    fn new(field: FieldPath, message: impl Into<String>) -> Self {
        SettingsError {
            field,
            message: message.into(),
        }
    }
}

impl AnalysisSettings {
    /// Checks every field; the first error names its field and the value it got.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let at =
            |field: &str, message: String| Err(SettingsError::new(FieldPath::new(field), message));
        if self.min_requests == 0 {
            return at("min_requests", "must be at least 1, got 0".into());
        }
        self.error_statuses()?;
        for (field, confidence) in [
            ("error_confidence", self.error_confidence),
            ("latency_confidence", self.latency_confidence),
        ] {
            if !(confidence > 0.5 && confidence < 1.0) {
                return at(
                    field,
                    format!("must be between 0.5 and 1 (exclusive), got {confidence}"),
                );
            }
        }
        for (field, ratio) in [
            ("error_ratio", self.error_ratio),
            ("latency_ratio", self.latency_ratio),
        ] {
            if !(ratio.is_finite() && ratio >= 1.0) {
                return at(
                    field,
                    format!("must be at least 1 (canary as bad as stable), got {ratio}"),
                );
            }
        }
        if !(self.error_floor >= 0.0 && self.error_floor < 100.0) {
            return at(
                "error_floor",
                format!(
                    "must be at least 0 and below 100 (percentage points), got {}",
                    self.error_floor
                ),
            );
        }
        if !(self.abort_error_rate > 0.0 && self.abort_error_rate <= 100.0) {
            return at(
                "abort_error_rate",
                format!(
                    "must be above 0 and at most 100 (a percentage; 100 turns the hard guard off), got {}",
                    self.abort_error_rate
                ),
            );
        }
        if self.abort_min_requests == 0 {
            return at("abort_min_requests", "must be at least 1, got 0".into());
        }
        Ok(())
    }

    /// The parsed `error_statuses`, for counting on the request path.
    pub fn error_statuses(&self) -> Result<StatusSet, SettingsError> {
        if self.error_statuses.is_empty() {
            return Err(SettingsError::new(
                FieldPath::new("error_statuses"),
                "must name at least one status, like [\"5xx\"]",
            ));
        }
        StatusSet::parse(&self.error_statuses).map_err(|(i, message)| {
            SettingsError::new(FieldPath::new("error_statuses").index(i), message)
        })
    }

    /// The name of the error rate in verdict texts: the statuses as written (`5xx`).
    fn errors_label(&self) -> String {
        if self.error_statuses.is_empty() {
            "errors".to_owned()
        } else {
            let trimmed: Vec<&str> = self.error_statuses.iter().map(|s| s.trim()).collect();
            trimmed.join(",")
        }
    }
}

/// A set of HTTP statuses (100 to 999) as a bit set: one shift and one mask to ask, on the
/// request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSet {
    bits: [u64; 16],
}

impl Default for StatusSet {
    /// The default error set: every 5xx.
    fn default() -> Self {
        let mut set = StatusSet { bits: [0; 16] };
        set.insert_range(500, 599);
        set
    }
}

impl StatusSet {
    /// True when `status` is in the set.
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        let status = usize::from(status);
        self.bits
            .get(status / 64)
            .is_some_and(|word| word & (1 << (status % 64)) != 0)
    }

    /// Reads codes (`503`), ranges (`500-599`) and classes (`5xx`); a wrong entry answers its
    /// index and what is wrong with it.
    fn parse(entries: &[String]) -> Result<StatusSet, (usize, String)> {
        let mut set = StatusSet { bits: [0; 16] };
        for (i, entry) in entries.iter().enumerate() {
            let text = entry.trim();
            let code = |part: &str| -> Result<u16, String> {
                let part = part.trim();
                match part.parse::<u16>() {
                    Ok(code) if (100..=999).contains(&code) && part.len() == 3 => Ok(code),
                    Ok(_) => Err(format!("`{part}` is not an HTTP status (100 to 999)")),
                    Err(_) => Err(format!(
                        "`{text}` is not a status (like \"503\"), a range (like \"500-599\") or a class (like \"5xx\")"
                    )),
                }
            };
            let class = text
                .strip_suffix("xx")
                .or_else(|| text.strip_suffix("XX"))
                .filter(|digit| digit.len() == 1)
                .and_then(|digit| digit.parse::<u16>().ok())
                .filter(|digit| *digit >= 1);
            let (first, last) = if let Some(digit) = class {
                (digit * 100, digit * 100 + 99)
            } else if let Some((first, last)) = text.split_once('-') {
                let first = code(first).map_err(|m| (i, m))?;
                let last = code(last).map_err(|m| (i, m))?;
                if first > last {
                    return Err((i, format!("range `{text}` runs backwards")));
                }
                (first, last)
            } else {
                let code = code(text).map_err(|m| (i, m))?;
                (code, code)
            };
            set.insert_range(first, last);
        }
        Ok(set)
    }

    fn insert_range(&mut self, first: u16, last: u16) {
        for status in first..=last {
            let status = usize::from(status);
            self.bits[status / 64] |= 1 << (status % 64);
        }
    }
}

/// What a window (or one check of it) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No check failed: the step may go on.
    Pass,
    /// A check failed on all three conditions; `failure_limit` failing windows in a row abort.
    Fail,
    /// The hard guard fired: abort now.
    Abort,
    /// Too few requests for a verdict: the step waits.
    NotEnoughData,
}

/// The three conditions a failing error or latency check needs together; a check that passes
/// although the canary looked worse lists the ones that were missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The p-value was not below `1 - confidence`.
    Significance,
    /// The canary was less than `ratio` times stable.
    Ratio,
    /// The canary was worse by less than the floor.
    Floor,
}

/// Which latency quantile a latency check's ratio and text lead with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantile {
    P50,
    P99,
}

/// The figures a check compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measure {
    /// The hard guard, on the canary alone.
    HardGuard {
        canary_errors: u64,
        canary_requests: u64,
        /// The guard's limit, in percent (`abort_error_rate`).
        limit_percent: f64,
    },
    /// Whether each version had enough requests.
    Samples {
        canary_requests: u64,
        stable_requests: u64,
        min_requests: u64,
    },
    /// Error rates.
    ErrorRate {
        canary_errors: u64,
        canary_requests: u64,
        stable_errors: u64,
        stable_requests: u64,
    },
    /// Latency quantiles, in microseconds (`None` with an empty histogram).
    Latency {
        canary_p50_us: Option<u64>,
        canary_p99_us: Option<u64>,
        stable_p50_us: Option<u64>,
        stable_p99_us: Option<u64>,
        /// The quantile the ratio and the text lead with: p99, unless only p50 is worse enough.
        lead: Quantile,
    },
}

/// One check of a window: what was compared, how it came out, and a sentence that says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The figures compared.
    pub measure: Measure,
    /// This check's outcome: `pass` or `fail` (error rate, latency), `abort` (hard guard),
    /// `not_enough_data` (samples).
    pub outcome: Outcome,
    /// The one-sided p-value of the significance test (error rate, latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// Canary over stable (error rate, or the lead latency quantile); `None` when stable's figure
    /// is zero and the canary's is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The conditions that were not met, in the order significance, ratio, floor (error rate,
    /// latency).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back_by: Vec<Condition>,
    /// The check in words, with its figures:
    /// `canary 5xx 4.1% (41/1000) vs stable 0.3% (12/4000), p<0.001, 13.7x: FAIL`.
    pub text: String,
}

/// The verdict on one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The window's outcome: abort when the hard guard fired, else not enough data when either
    /// version was short of requests, else fail when any check failed, else pass.
    pub outcome: Outcome,
    /// The checks made, each with its figures.
    pub checks: Vec<Check>,
    /// The checks' texts joined with `; `: the line to log, record and show.
    pub text: String,
}

impl Verdict {
    fn new(outcome: Outcome, checks: Vec<Check>) -> Verdict {
        let text = checks
            .iter()
            .map(|check| check.text.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Verdict {
            outcome,
            checks,
            text,
        }
    }
}

/// Small slack for comparisons of ratios and differences computed in floating point, so that 2%
/// against 1% is "2.0x" and "1 point" as a person reads it.
const SLACK: f64 = 1e-9;

/// Judges one window: the canary's figures against stable's, both over the same window.
///
/// Never panics, whatever the figures (zeros, huge counts, histograms of any length, more errors
/// than requests) or the settings (they should have passed [`AnalysisSettings::validate`]; with
/// nonsense in them the verdict is nonsense, but still a verdict).
pub fn judge(settings: &AnalysisSettings, canary: &Figures, stable: &Figures) -> Verdict {
    let label = settings.errors_label();
    if let Some(guard) = hard_guard(settings, &label, canary) {
        return Verdict::new(Outcome::Abort, vec![guard]);
    }
    if canary.requests < settings.min_requests || stable.requests < settings.min_requests {
        let text = format!(
            "canary {} requests vs stable {} (need {} each): not enough data",
            canary.requests, stable.requests, settings.min_requests
        );
        let samples = Check {
            measure: Measure::Samples {
                canary_requests: canary.requests,
                stable_requests: stable.requests,
                min_requests: settings.min_requests,
            },
            outcome: Outcome::NotEnoughData,
            p_value: None,
            ratio: None,
            held_back_by: Vec::new(),
            text,
        };
        return Verdict::new(Outcome::NotEnoughData, vec![samples]);
    }
    let checks = vec![
        error_check(settings, &label, canary, stable),
        latency_check(settings, canary, stable),
    ];
    let outcome = if checks.iter().any(|c| c.outcome == Outcome::Fail) {
        Outcome::Fail
    } else {
        Outcome::Pass
    };
    Verdict::new(outcome, checks)
}

/// Judges the canary against stable's figures of an *earlier* window: at a 100% step and during
/// the post-promotion guard stable answers nobody, so its last passing window is the baseline.
/// The hard guard and the error rate are judged as by [`judge`]; latency is shown but never
/// fails, because an earlier window ran under other load and latency follows load (a healthy
/// canary at 100% on a busy moment would be rolled back). A latency regression is caught at the
/// steps below 100%, where both versions share the window.
pub fn judge_against_earlier(
    settings: &AnalysisSettings,
    canary: &Figures,
    stable: &Figures,
) -> Verdict {
    let verdict = judge(settings, canary, stable);
    if verdict.outcome != Outcome::Fail {
        return verdict;
    }
    let checks: Vec<Check> = verdict
        .checks
        .into_iter()
        .map(|mut c| {
            if matches!(c.measure, Measure::Latency { .. }) && c.outcome == Outcome::Fail {
                c.outcome = Outcome::Pass;
                let base = c.text.strip_suffix(": FAIL").unwrap_or(&c.text).to_string();
                c.text =
                    format!("{base}: not judged (stable's figures are from an earlier window)");
            }
            c
        })
        .collect();
    let outcome = if checks.iter().any(|c| c.outcome == Outcome::Fail) {
        Outcome::Fail
    } else {
        Outcome::Pass
    };
    Verdict::new(outcome, checks)
}

/// The hard guard's check when it fires; `None` when it does not.
fn hard_guard(settings: &AnalysisSettings, label: &str, canary: &Figures) -> Option<Check> {
    if canary.requests == 0 || canary.requests < settings.abort_min_requests {
        return None;
    }
    let rate = canary.error_rate() * 100.0;
    let above_limit = rate > settings.abort_error_rate; // false for NaN settings too
    if !above_limit {
        return None;
    }
    let errors = canary.errors.min(canary.requests);
    let text = format!(
        "canary {label} {} ({errors}/{}) above the hard limit of {}% over {}+ requests: ABORT",
        percent(rate),
        canary.requests,
        number(settings.abort_error_rate),
        settings.abort_min_requests,
    );
    Some(Check {
        measure: Measure::HardGuard {
            canary_errors: errors,
            canary_requests: canary.requests,
            limit_percent: settings.abort_error_rate,
        },
        outcome: Outcome::Abort,
        p_value: None,
        ratio: None,
        held_back_by: Vec::new(),
        text,
    })
}

/// The ratio of two non-negative figures, `None` when only the base is zero (0 against 0 is
/// 1.0x: no difference).
fn ratio_of(canary: f64, stable: f64) -> Option<f64> {
    if stable > 0.0 {
        Some(canary / stable)
    } else if canary > 0.0 {
        None
    } else {
        Some(1.0)
    }
}

/// Whether `canary` is at least `times` `stable` (always, when stable is zero and the canary not).
fn ratio_met(canary: f64, stable: f64, times: f64) -> bool {
    canary > stable && ratio_of(canary, stable).is_none_or(|r| r >= times - SLACK)
}

fn error_check(
    settings: &AnalysisSettings,
    label: &str,
    canary: &Figures,
    stable: &Figures,
) -> Check {
    let (c_errors, s_errors) = (
        canary.errors.min(canary.requests),
        stable.errors.min(stable.requests),
    );
    let test = stats::two_proportion(c_errors, canary.requests, s_errors, stable.requests);
    let (c_rate, s_rate) = (canary.error_rate(), stable.error_rate());
    let held_back_by = missing_conditions(
        test.p < 1.0 - settings.error_confidence,
        ratio_met(c_rate, s_rate, settings.error_ratio),
        (c_rate - s_rate) * 100.0 >= settings.error_floor - SLACK,
    );
    let ratio = ratio_of(c_rate, s_rate);
    let mut text = format!(
        "canary {label} {} ({c_errors}/{}) vs stable {} ({s_errors}/{}), {}, {}",
        percent(c_rate * 100.0),
        canary.requests,
        percent(s_rate * 100.0),
        stable.requests,
        p_text(test.p),
        ratio_text(ratio),
    );
    let outcome = finish_text(
        &mut text,
        &held_back_by,
        c_rate > s_rate,
        settings.error_confidence,
        settings.error_ratio,
        &format!("{:.1} points worse", settings.error_floor),
    );
    Check {
        measure: Measure::ErrorRate {
            canary_errors: c_errors,
            canary_requests: canary.requests,
            stable_errors: s_errors,
            stable_requests: stable.requests,
        },
        outcome,
        p_value: Some(test.p),
        ratio,
        held_back_by,
        text,
    }
}

fn latency_check(settings: &AnalysisSettings, canary: &Figures, stable: &Figures) -> Check {
    let quantiles = |f: &Figures| (f.quantile(0.5), f.quantile(0.99));
    let ((c50, c99), (s50, s99)) = (quantiles(canary), quantiles(stable));
    let test = stats::mann_whitney(&canary.latency, &stable.latency).test;
    let us = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let (Some(c50), Some(c99), Some(s50), Some(s99)) = (c50, c99, s50, s99) else {
        return Check {
            measure: Measure::Latency {
                canary_p50_us: us(c50),
                canary_p99_us: us(c99),
                stable_p50_us: us(s50),
                stable_p99_us: us(s99),
                lead: Quantile::P99,
            },
            outcome: Outcome::Pass,
            p_value: None,
            ratio: None,
            held_back_by: Vec::new(),
            text: "latency not measured (no histogram): pass".to_owned(),
        };
    };
    let secs = Duration::as_secs_f64;
    let worse = |c: Duration, s: Duration| {
        (
            ratio_met(secs(&c), secs(&s), settings.latency_ratio),
            c >= s && c - s >= settings.latency_floor,
        )
    };
    let p99_worse = worse(c99, s99);
    let p50_worse = worse(c50, s50);
    let lead = if p50_worse == (true, true) && p99_worse != (true, true) {
        Quantile::P50
    } else {
        Quantile::P99
    };
    let ((lead_name, lc, ls, (ratio_ok, floor_ok)), (other_name, oc, os)) = match lead {
        Quantile::P99 => (("p99", c99, s99, p99_worse), ("p50", c50, s50)),
        Quantile::P50 => (("p50", c50, s50, p50_worse), ("p99", c99, s99)),
    };
    let held_back_by = missing_conditions(
        test.p < 1.0 - settings.latency_confidence,
        ratio_ok,
        floor_ok,
    );
    let ratio = ratio_of(secs(&lc), secs(&ls));
    let mut text = format!(
        "canary {lead_name} {} vs stable {} ({other_name} {} vs {}), {}, {}",
        millis(lc),
        millis(ls),
        millis(oc),
        millis(os),
        p_text(test.p),
        ratio_text(ratio),
    );
    let outcome = finish_text(
        &mut text,
        &held_back_by,
        c50 > s50 || c99 > s99,
        settings.latency_confidence,
        settings.latency_ratio,
        &format!("{} slower", millis(settings.latency_floor)),
    );
    Check {
        measure: Measure::Latency {
            canary_p50_us: us(Some(c50)),
            canary_p99_us: us(Some(c99)),
            stable_p50_us: us(Some(s50)),
            stable_p99_us: us(Some(s99)),
            lead,
        },
        outcome,
        p_value: Some(test.p),
        ratio,
        held_back_by,
        text,
    }
}

/// The conditions of a failing check that were not met, in the order significance, ratio, floor.
/// Each is written so that NaN (nonsense settings) reads as "not met".
fn missing_conditions(significant: bool, ratio: bool, floor: bool) -> Vec<Condition> {
    [
        (significant, Condition::Significance),
        (ratio, Condition::Ratio),
        (floor, Condition::Floor),
    ]
    .into_iter()
    .filter_map(|(met, condition)| (!met).then_some(condition))
    .collect()
}

/// Ends a check's text with its outcome (`: FAIL`, or `: pass (...)` with what held it back) and
/// answers the outcome.
fn finish_text(
    text: &mut String,
    held_back_by: &[Condition],
    canary_looks_worse: bool,
    confidence: f64,
    ratio: f64,
    floor: &str,
) -> Outcome {
    if held_back_by.is_empty() {
        text.push_str(": FAIL");
        return Outcome::Fail;
    }
    if !canary_looks_worse {
        text.push_str(": pass (no worse than stable)");
        return Outcome::Pass;
    }
    let reasons: Vec<String> = held_back_by
        .iter()
        .map(|condition| match condition {
            Condition::Significance => {
                format!("not significant at {}%", number(confidence * 100.0))
            }
            Condition::Ratio => format!("ratio below {ratio:.1}x"),
            Condition::Floor => format!("less than {floor}"),
        })
        .collect();
    let _ = write!(text, ": pass ({})", reasons.join(", "));
    Outcome::Pass
}

/// `p<0.001` below 0.001, else `p=0.012`.
fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p<0.001".to_owned()
    } else {
        format!("p={p:.3}")
    }
}

/// `13.7x`, or `stable at 0` when there is no ratio to show.
fn ratio_text(ratio: Option<f64>) -> String {
    match ratio {
        Some(ratio) => format!("{ratio:.1}x"),
        None => "stable at 0".to_owned(),
    }
}

/// A percentage with one decimal: `4.1%`.
fn percent(value: f64) -> String {
    format!("{value:.1}%")
}

/// A setting as a person wrote it: `20`, `99.5`, `1.25` (no trailing zeros).
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

/// A latency as a person reads it: `0.9ms`, `52ms`, `1.5s`.
fn millis(latency: Duration) -> String {
    let ms = latency.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// How sure a detection estimate wants to be: [`requests_to_detect`] answers the requests at
/// which a real difference fails a window this often.
pub const DETECTION_POWER: f64 = 0.8;

/// The chance that one window with `requests` requests per version fails the error check, when
/// stable's true error rate is `stable_rate` and the canary's `canary_rate` (shares, 0 to 1).
///
/// The estimate the docs quote, from the normal approximation: the observed difference must
/// clear both the significance threshold (at its expected pooled standard error) and the floor,
/// and the observed canary rate must be at least `error_ratio` times stable's; the two are
/// correlated, so the joint chance is integrated numerically. A difference that sits exactly on
/// the ratio or the floor is caught at most about half the time, however many requests there are:
/// each window's figures land on either side of it equally often.
pub fn detection_chance(
    stable_rate: f64,
    canary_rate: f64,
    requests: u64,
    settings: &AnalysisSettings,
) -> f64 {
    let (p1, p2) = (canary_rate, stable_rate);
    let valid = |p: f64| (0.0..=1.0).contains(&p);
    if !valid(p1) || !valid(p2) || requests == 0 {
        return 0.0;
    }
    let n = requests as f64;
    let r = settings.error_ratio;
    let pooled = (p1 + p2) / 2.0;
    let z_alpha = stats::normal_upper_quantile(1.0 - settings.error_confidence);
    let significant_at = z_alpha * (pooled * (1.0 - pooled) * 2.0 / n).sqrt();
    let threshold = significant_at.max(settings.error_floor / 100.0 - SLACK);
    // D = observed canary rate - stable's; W = observed canary rate - r * stable's (>= 0 for
    // the ratio condition).
    let (v1, v2) = (p1 * (1.0 - p1) / n, p2 * (1.0 - p2) / n);
    let (mean_d, var_d) = (p1 - p2, v1 + v2);
    let (mean_w, var_w) = (p1 - r * p2, v1 + r * r * v2);
    let cov = v1 + r * v2;
    let spread = var_d > 0.0;
    if !spread {
        return f64::from(u8::from(mean_d >= threshold && mean_w >= 0.0 && p1 > 0.0));
    }
    let sd_d = var_d.sqrt();
    let conditional_var = (var_w - cov * cov / var_d).max(0.0);
    // P(D >= threshold, W >= 0) = ∫ φ(t) P(W >= 0 | D = mean_d + t sd_d) dt over t >= t0.
    let chance_w = |t: f64| {
        let mean = mean_w + cov / var_d * (t * sd_d);
        if conditional_var > 0.0 {
            stats::normal_upper_tail(-mean / conditional_var.sqrt())
        } else {
            f64::from(u8::from(mean >= 0.0))
        }
    };
    let density = |t: f64| (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let t0 = ((threshold - mean_d) / sd_d).max(-12.0);
    let t1 = 12.0f64;
    if t0 >= t1 {
        return 0.0;
    }
    // Simpson's rule over [t0, t1].
    let steps = 2000;
    let h = (t1 - t0) / steps as f64;
    let f = |t: f64| density(t) * chance_w(t);
    let mut sum = f(t0) + f(t1);
    for k in 1..steps {
        let t = t0 + h * k as f64;
        sum += if k % 2 == 1 { 4.0 } else { 2.0 } * f(t);
    }
    (sum * h / 3.0).clamp(0.0, 1.0)
}

/// How many requests per version a window needs to fail, [`DETECTION_POWER`] (4 times in 5) of
/// the time, when stable's true error rate is `stable_rate` and the canary's `canary_rate`
/// (shares, 0 to 1); never fewer than `min_requests`. `None` when no number of requests gets
/// there: the canary is not worse by the settings' ratio and floor, or sits right on them.
///
/// With the default settings (99%, 2x, 1 point):
/// - 1% → 2% is `None`: 2% is exactly twice 1% and exactly 1 point above it, so a window fails
///   only when its figures land on the far side of both edges, which happens in at most about 45%
///   of the windows however many requests there are. Significance alone would take 2,965
///   requests per version (the textbook sample size of a one-sided 99% test with 80% power).
/// - 1% → 3% takes 997 requests per version; 1% → 4%, 543; 1% → 5%, 364; 0% → 5%, 195.
/// - With `error_ratio = 1.5` and `error_floor = 0.5`, 1% → 2% takes 2,965.
///
/// A rollout step usually sends far more traffic to stable than to the canary; then the canary
/// needs fewer requests than these (up to half as many), since stable's rate is known better.
pub fn requests_to_detect(
    stable_rate: f64,
    canary_rate: f64,
    settings: &AnalysisSettings,
) -> Option<u64> {
    let enough =
        |n: u64| detection_chance(stable_rate, canary_rate, n, settings) >= DETECTION_POWER;
    let mut high = settings.min_requests.max(1);
    while !enough(high) {
        if high >= 1 << 40 {
            return None;
        }
        high *= 2;
    }
    let mut low = high / 2; // not enough, or below min_requests
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if enough(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(high.max(settings.min_requests))
}

#[cfg(test)]
mod tests;
