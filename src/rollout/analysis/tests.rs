use super::*;
use crate::rollout::figures::BUCKETS;
use proptest::prelude::*;

/// `requests` requests at `latency` each, `errors` of them errors.
fn at(requests: u64, errors: u64, latency: Duration) -> Figures {
    let mut figures = Figures::default();
    figures.latency[crate::rollout::figures::bucket_of(latency)] = requests;
    figures.requests = requests;
    figures.errors = errors;
    figures
}

/// `requests` requests spread evenly from `from` to `to`, no errors.
fn spread(requests: u64, from: Duration, to: Duration) -> Figures {
    let mut figures = Figures::default();
    for i in 0..requests {
        let share = i as f64 / (requests.max(2) - 1) as f64;
        figures.record(false, from + (to - from).mul_f64(share));
    }
    figures
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn judge_default(canary: &Figures, stable: &Figures) -> Verdict {
    judge(&AnalysisSettings::default(), canary, stable)
}

fn check<'a>(verdict: &'a Verdict, kind: &str) -> &'a Check {
    verdict
        .checks
        .iter()
        .find(|c| {
            matches!(
                (&c.measure, kind),
                (Measure::ErrorRate { .. }, "errors")
                    | (Measure::Latency { .. }, "latency")
                    | (Measure::HardGuard { .. }, "guard")
                    | (Measure::Samples { .. }, "samples")
            )
        })
        .unwrap_or_else(|| panic!("no {kind} check in {verdict:#?}"))
}

// ---- settings ----

#[test]
fn settings_default_every_field_and_read_toml_and_json_names() {
    let settings: AnalysisSettings = toml::from_str("").expect("empty is all defaults");
    assert_eq!(settings, AnalysisSettings::default());
    settings.validate().expect("defaults are valid");

    let settings: AnalysisSettings = toml::from_str(
        r#"
        min_requests = 500
        error_statuses = ["500-599", "429"]
        latency_floor = "25ms"
        abort_error_rate = 50.0
        "#,
    )
    .expect("reads");
    assert_eq!(settings.min_requests, 500);
    assert_eq!(settings.latency_floor, ms(25));
    assert_eq!(settings.error_ratio, 2.0);
    settings.validate().expect("valid");

    let json = serde_json::to_value(AnalysisSettings::default()).expect("serializes");
    assert_eq!(
        json,
        serde_json::json!({
            "min_requests": 100,
            "error_statuses": ["5xx"],
            "error_confidence": 0.99,
            "error_ratio": 2.0,
            "error_floor": 1.0,
            "latency_confidence": 0.99,
            "latency_ratio": 1.5,
            "latency_floor": "10ms",
            "abort_error_rate": 20.0,
            "abort_min_requests": 50,
        })
    );
    let back: AnalysisSettings = serde_json::from_value(json).expect("reads back");
    assert_eq!(back, AnalysisSettings::default());
}

#[test]
fn settings_refuse_unknown_fields_and_bad_durations_with_the_reason() {
    let err = toml::from_str::<AnalysisSettings>("min_request = 5").expect_err("typo");
    assert!(
        err.to_string().contains("unknown field `min_request`"),
        "{err}"
    );
    let err = toml::from_str::<AnalysisSettings>(r#"latency_floor = "fast""#).expect_err("bad");
    assert!(
        err.to_string()
            .contains("invalid value: string \"fast\", expected a duration"),
        "{err}"
    );
    let err = toml::from_str::<AnalysisSettings>("latency_floor = 10").expect_err("no unit");
    assert!(err.to_string().contains("latency_floor"), "{err}");
}

#[test]
fn validate_names_the_field_and_the_value() {
    let cases: Vec<(AnalysisSettings, &str)> = vec![
        (
            AnalysisSettings {
                error_confidence: 1.5,
                ..Default::default()
            },
            "error_confidence: must be between 0.5 and 1 (exclusive), got 1.5",
        ),
        (
            AnalysisSettings {
                latency_confidence: 0.5,
                ..Default::default()
            },
            "latency_confidence: must be between 0.5 and 1 (exclusive), got 0.5",
        ),
        (
            AnalysisSettings {
                error_confidence: f64::NAN,
                ..Default::default()
            },
            "error_confidence: must be between 0.5 and 1 (exclusive), got NaN",
        ),
        (
            AnalysisSettings {
                min_requests: 0,
                ..Default::default()
            },
            "min_requests: must be at least 1, got 0",
        ),
        (
            AnalysisSettings {
                error_ratio: 0.5,
                ..Default::default()
            },
            "error_ratio: must be at least 1 (canary as bad as stable), got 0.5",
        ),
        (
            AnalysisSettings {
                latency_ratio: f64::INFINITY,
                ..Default::default()
            },
            "latency_ratio: must be at least 1 (canary as bad as stable), got inf",
        ),
        (
            AnalysisSettings {
                error_floor: -1.0,
                ..Default::default()
            },
            "error_floor: must be at least 0 and below 100 (percentage points), got -1",
        ),
        (
            AnalysisSettings {
                abort_error_rate: 0.0,
                ..Default::default()
            },
            "abort_error_rate: must be above 0 and at most 100 (a percentage; 100 turns the hard guard off), got 0",
        ),
        (
            AnalysisSettings {
                abort_error_rate: 150.0,
                ..Default::default()
            },
            "abort_error_rate: must be above 0 and at most 100 (a percentage; 100 turns the hard guard off), got 150",
        ),
        (
            AnalysisSettings {
                abort_min_requests: 0,
                ..Default::default()
            },
            "abort_min_requests: must be at least 1, got 0",
        ),
        (
            AnalysisSettings {
                error_statuses: vec![],
                ..Default::default()
            },
            "error_statuses: must name at least one status, like [\"5xx\"]",
        ),
        (
            AnalysisSettings {
                error_statuses: vec!["5xx".into(), "teapot".into()],
                ..Default::default()
            },
            "error_statuses[1]: `teapot` is not a status (like \"503\"), a range (like \"500-599\") or a class (like \"5xx\")",
        ),
        (
            AnalysisSettings {
                error_statuses: vec!["99".into()],
                ..Default::default()
            },
            "error_statuses[0]: `99` is not an HTTP status (100 to 999)",
        ),
        (
            AnalysisSettings {
                error_statuses: vec!["500-1000".into()],
                ..Default::default()
            },
            "error_statuses[0]: `1000` is not an HTTP status (100 to 999)",
        ),
        (
            AnalysisSettings {
                error_statuses: vec!["599-500".into()],
                ..Default::default()
            },
            "error_statuses[0]: range `599-500` runs backwards",
        ),
        (
            AnalysisSettings {
                error_statuses: vec!["0xx".into()],
                ..Default::default()
            },
            "error_statuses[0]: `0xx` is not a status (like \"503\"), a range (like \"500-599\") or a class (like \"5xx\")",
        ),
    ];
    for (settings, message) in cases {
        let err = settings.validate().expect_err(message);
        assert_eq!(err.to_string(), message);
    }
    // The field is a path that a caller can place inside its own document.
    let err = AnalysisSettings {
        error_statuses: vec!["5xx".into(), "x".into()],
        ..Default::default()
    }
    .validate()
    .expect_err("bad status");
    let placed = FieldPath::new("services")
        .index(0)
        .field("rollout")
        .field("analysis")
        .join(&err.field);
    assert_eq!(
        placed.to_string(),
        "services[0].rollout.analysis.error_statuses[1]"
    );
}

#[test]
fn status_sets_read_codes_ranges_and_classes() {
    let set = AnalysisSettings::default()
        .error_statuses()
        .expect("default");
    assert_eq!(set, StatusSet::default());
    assert!(set.contains(500) && set.contains(502) && set.contains(599));
    assert!(!set.contains(499) && !set.contains(600) && !set.contains(200));
    assert!(!set.contains(0) && !set.contains(u16::MAX));

    let settings = AnalysisSettings {
        error_statuses: vec!["500-503".into(), " 429 ".into(), "4XX".into()],
        ..Default::default()
    };
    let set = settings.error_statuses().expect("valid");
    for status in [400, 404, 429, 499, 500, 503] {
        assert!(set.contains(status), "{status}");
    }
    for status in [504, 599, 399, 200] {
        assert!(!set.contains(status), "{status}");
    }
}

// ---- verdicts the issue asks for ----

#[test]
fn canary_with_5_percent_5xx_against_a_clean_stable_fails() {
    // At a 5% step stable sees about 19 times the canary's traffic.
    let verdict = judge_default(&at(100, 5, ms(1)), &at(1900, 0, ms(1)));
    assert_eq!(verdict.outcome, Outcome::Fail);
    let errors = check(&verdict, "errors");
    // By hand: pooled 5/2000, se = sqrt(0.0025 * 0.9975 * (1/100 + 1/1900)) = 0.005123,
    // z = 0.05 / se = 9.76.
    assert_eq!(
        errors.text,
        "canary 5xx 5.0% (5/100) vs stable 0.0% (0/1900), p<0.001, stable at 0: FAIL"
    );
    assert_eq!(errors.ratio, None);
    assert!(errors.held_back_by.is_empty());
    // Latency is the same on both sides: that check passes.
    assert_eq!(check(&verdict, "latency").outcome, Outcome::Pass);
    assert_eq!(
        verdict.text,
        format!("{}; {}", errors.text, check(&verdict, "latency").text)
    );

    // Equal traffic: 10/200 against 0/200 (statsmodels `proportions_ztest`: p = 0.00068).
    let verdict = judge_default(&at(200, 10, ms(1)), &at(200, 0, ms(1)));
    assert_eq!(verdict.outcome, Outcome::Fail);
    assert_eq!(
        check(&verdict, "errors").text,
        "canary 5xx 5.0% (10/200) vs stable 0.0% (0/200), p<0.001, stable at 0: FAIL"
    );

    // 5/100 against 0/100 is not yet significant at 99% (p = 0.0118, two_proportion's tests).
    let verdict = judge_default(&at(100, 5, ms(1)), &at(100, 0, ms(1)));
    assert_eq!(verdict.outcome, Outcome::Pass);
    let errors = check(&verdict, "errors");
    assert_eq!(
        errors.text,
        "canary 5xx 5.0% (5/100) vs stable 0.0% (0/100), p=0.012, stable at 0: pass (not significant at 99%)"
    );
    assert_eq!(errors.held_back_by, [Condition::Significance]);
}

#[test]
fn the_designs_example_reads_as_written() {
    let verdict = judge_default(&at(1000, 41, ms(5)), &at(4000, 12, ms(5)));
    let errors = check(&verdict, "errors");
    assert_eq!(
        errors.text,
        "canary 5xx 4.1% (41/1000) vs stable 0.3% (12/4000), p<0.001, 13.7x: FAIL"
    );
    assert_eq!(errors.outcome, Outcome::Fail);
    assert!(errors.p_value.is_some_and(|p| p < 1e-20));
}

#[test]
fn canary_50ms_slower_fails_on_latency() {
    // Every request at one latency: 1 ms stable, 51 ms canary. The quantiles are estimated
    // within the buckets: 1 ms is in [896 µs, 1024 µs), 51 ms in [49152 µs, 57344 µs).
    let verdict = judge_default(&at(200, 0, ms(51)), &at(200, 0, ms(1)));
    assert_eq!(verdict.outcome, Outcome::Fail);
    assert_eq!(check(&verdict, "errors").outcome, Outcome::Pass);
    let latency = check(&verdict, "latency");
    assert_eq!(
        latency.text,
        "canary p99 57ms vs stable 1.0ms (p50 53ms vs 1.0ms), p<0.001, 56.0x: FAIL"
    );
    assert_eq!(
        latency.measure,
        Measure::Latency {
            canary_p50_us: Some(53_248),
            canary_p99_us: Some(57_262),
            stable_p50_us: Some(960),
            stable_p99_us: Some(1_022),
            lead: Quantile::P99,
        }
    );

    // Spread out like real traffic: stable 0.5 to 1.5 ms, canary 50 ms more.
    let verdict = judge_default(
        &spread(
            300,
            ms(50) + Duration::from_micros(500),
            ms(51) + Duration::from_micros(500),
        ),
        &spread(300, Duration::from_micros(500), Duration::from_micros(1500)),
    );
    assert_eq!(verdict.outcome, Outcome::Fail, "{}", verdict.text);
}

#[test]
fn a_small_or_proportionate_slowdown_passes_and_says_why() {
    // 30% slower: significant, 30 ms and more slower at p99 and p50, but not 1.5x.
    let verdict = judge_default(
        &spread(500, ms(130), ms(160)),
        &spread(500, ms(100), ms(120)),
    );
    assert_eq!(verdict.outcome, Outcome::Pass);
    let latency = check(&verdict, "latency");
    assert_eq!(latency.held_back_by, [Condition::Ratio]);
    assert!(
        latency.text.ends_with(": pass (ratio below 1.5x)"),
        "{}",
        latency.text
    );

    // Three times slower, but only by 2 ms.
    let verdict = judge_default(&at(500, 0, ms(3)), &at(500, 0, ms(1)));
    let latency = check(&verdict, "latency");
    assert_eq!(latency.held_back_by, [Condition::Floor]);
    assert!(
        latency.text.ends_with(": pass (less than 10ms slower)"),
        "{}",
        latency.text
    );
}

#[test]
fn a_slower_median_leads_the_latency_text_when_p99_is_alike() {
    let mut stable = at(980, 0, ms(20));
    stable.add(&at(20, 0, ms(300)));
    let mut canary = at(980, 0, ms(60));
    canary.add(&at(20, 0, ms(300)));
    let verdict = judge_default(&canary, &stable);
    assert_eq!(verdict.outcome, Outcome::Fail, "{}", verdict.text);
    let latency = check(&verdict, "latency");
    assert!(
        matches!(
            latency.measure,
            Measure::Latency {
                lead: Quantile::P50,
                ..
            }
        ),
        "{latency:?}"
    );
    assert!(latency.text.starts_with("canary p50 "), "{}", latency.text);
}

#[test]
fn too_few_requests_wait_however_bad_they_look() {
    // 15% errors is bad but below the hard guard; 99 canary requests are not enough.
    let verdict = judge_default(&at(99, 15, ms(1)), &at(5000, 0, ms(1)));
    assert_eq!(verdict.outcome, Outcome::NotEnoughData);
    assert_eq!(
        verdict.text,
        "canary 99 requests vs stable 5000 (need 100 each): not enough data"
    );
    assert_eq!(
        verdict.checks[0].measure,
        Measure::Samples {
            canary_requests: 99,
            stable_requests: 5000,
            min_requests: 100
        }
    );
    // Stable short of requests: the same.
    let verdict = judge_default(&at(1000, 0, ms(1)), &at(3, 0, ms(1)));
    assert_eq!(verdict.outcome, Outcome::NotEnoughData);
    assert_eq!(
        verdict.text,
        "canary 1000 requests vs stable 3 (need 100 each): not enough data"
    );
    // Nothing at all.
    let verdict = judge_default(&Figures::default(), &Figures::default());
    assert_eq!(verdict.outcome, Outcome::NotEnoughData);
}

#[test]
fn hard_guard_aborts_without_stable_traffic() {
    let verdict = judge_default(&at(50, 11, ms(1)), &Figures::default());
    assert_eq!(verdict.outcome, Outcome::Abort);
    assert_eq!(
        verdict.text,
        "canary 5xx 22.0% (11/50) above the hard limit of 20% over 50+ requests: ABORT"
    );
    assert_eq!(
        verdict.checks,
        [Check {
            measure: Measure::HardGuard {
                canary_errors: 11,
                canary_requests: 50,
                limit_percent: 20.0
            },
            outcome: Outcome::Abort,
            p_value: None,
            ratio: None,
            held_back_by: vec![],
            text: verdict.text.clone(),
        }]
    );
    // It fires ahead of everything else, with plenty of data too.
    let verdict = judge_default(&at(1000, 300, ms(1)), &at(1000, 290, ms(1)));
    assert_eq!(verdict.outcome, Outcome::Abort);
    // Exactly 20% is not above 20%; all 49 failing is not yet 50 requests.
    assert_eq!(
        judge_default(&at(50, 10, ms(1)), &Figures::default()).outcome,
        Outcome::NotEnoughData
    );
    assert_eq!(
        judge_default(&at(49, 49, ms(1)), &Figures::default()).outcome,
        Outcome::NotEnoughData
    );
    // 100 turns it off.
    let off = AnalysisSettings {
        abort_error_rate: 100.0,
        ..Default::default()
    };
    assert_eq!(
        judge(&off, &at(50, 50, ms(1)), &Figures::default()).outcome,
        Outcome::NotEnoughData
    );
}

#[test]
fn a_passing_check_says_which_condition_held_it_back() {
    // Significant and 3 points worse, but only 1.3x: the design's example.
    let verdict = judge_default(&at(100_000, 13_000, ms(1)), &at(100_000, 10_000, ms(1)));
    assert_eq!(verdict.outcome, Outcome::Pass);
    let errors = check(&verdict, "errors");
    assert_eq!(
        errors.text,
        "canary 5xx 13.0% (13000/100000) vs stable 10.0% (10000/100000), p<0.001, 1.3x: pass (ratio below 2.0x)"
    );
    assert_eq!(errors.held_back_by, [Condition::Ratio]);

    // Significant and 3x, but 0.2 points.
    let verdict = judge_default(&at(100_000, 300, ms(1)), &at(100_000, 100, ms(1)));
    let errors = check(&verdict, "errors");
    assert_eq!(
        errors.text,
        "canary 5xx 0.3% (300/100000) vs stable 0.1% (100/100000), p<0.001, 3.0x: pass (less than 1.0 points worse)"
    );
    assert_eq!(errors.held_back_by, [Condition::Floor]);

    // All three missing, canary still a little worse.
    let verdict = judge_default(&at(1000, 11, ms(1)), &at(1000, 10, ms(1)));
    let errors = check(&verdict, "errors");
    assert_eq!(
        errors.held_back_by,
        [Condition::Significance, Condition::Ratio, Condition::Floor]
    );
    assert!(
        errors.text.ends_with(
            ": pass (not significant at 99%, ratio below 2.0x, less than 1.0 points worse)"
        ),
        "{}",
        errors.text
    );

    // A canary that is better says so rather than list conditions (statsmodels: p = 0.99924).
    let verdict = judge_default(&at(1000, 0, ms(1)), &at(1000, 10, ms(1)));
    assert_eq!(
        check(&verdict, "errors").text,
        "canary 5xx 0.0% (0/1000) vs stable 1.0% (10/1000), p=0.999, 0.0x: pass (no worse than stable)"
    );
}

#[test]
fn a_healthy_canary_passes() {
    let canary = spread(400, ms(2), ms(40));
    let stable = spread(4000, ms(2), ms(40));
    let verdict = judge_default(&canary, &stable);
    assert_eq!(verdict.outcome, Outcome::Pass, "{}", verdict.text);
    assert_eq!(verdict.checks.len(), 2);
}

#[test]
fn custom_error_statuses_name_the_rate() {
    let settings = AnalysisSettings {
        error_statuses: vec!["500-599".into(), "429".into()],
        ..Default::default()
    };
    let verdict = judge(&settings, &at(1000, 41, ms(5)), &at(4000, 12, ms(5)));
    assert!(
        verdict
            .text
            .starts_with("canary 500-599,429 4.1% (41/1000)"),
        "{}",
        verdict.text
    );
}

#[test]
fn p_values_and_latencies_print_as_a_person_reads_them() {
    assert_eq!(p_text(0.000_999), "p<0.001");
    assert_eq!(p_text(0.0), "p<0.001");
    assert_eq!(p_text(0.001), "p=0.001");
    assert_eq!(p_text(0.0123), "p=0.012");
    assert_eq!(p_text(1.0), "p=1.000");
    assert_eq!(millis(Duration::from_micros(960)), "1.0ms");
    assert_eq!(millis(ms(52)), "52ms");
    assert_eq!(millis(ms(1500)), "1500ms");
    assert_eq!(millis(ms(67_000)), "67.0s");
    assert_eq!(number(20.0), "20");
    assert_eq!(number(99.5), "99.5");
}

#[test]
fn verdicts_go_to_json_and_back() {
    let verdict = judge_default(&at(1000, 41, ms(5)), &at(4000, 12, ms(5)));
    let json = serde_json::to_value(&verdict).expect("serializes");
    assert_eq!(json["outcome"], "fail");
    assert_eq!(json["checks"][0]["outcome"], "fail");
    assert_eq!(
        json["checks"][0]["measure"],
        serde_json::json!({
            "kind": "error_rate",
            "canary_errors": 41,
            "canary_requests": 1000,
            "stable_errors": 12,
            "stable_requests": 4000,
        })
    );
    assert_eq!(json["checks"][1]["measure"]["kind"], "latency");
    assert_eq!(
        json["checks"][1]["held_back_by"],
        serde_json::json!(["significance", "ratio", "floor"])
    );
    let back: Verdict = serde_json::from_value(json).expect("reads back");
    assert_eq!(back, verdict);

    let waiting = judge_default(&at(1, 0, ms(1)), &at(1, 0, ms(1)));
    let json = serde_json::to_value(&waiting).expect("serializes");
    assert_eq!(json["outcome"], "not_enough_data");
    assert_eq!(json["checks"][0]["measure"]["kind"], "samples");
    assert_eq!(
        serde_json::from_value::<Verdict>(json).expect("reads back"),
        waiting
    );
}

// ---- how many requests a difference takes ----

#[test]
fn requests_to_detect_gives_the_figures_the_docs_quote() {
    let defaults = AnalysisSettings::default();
    assert_eq!(requests_to_detect(0.01, 0.02, &defaults), None);
    assert_eq!(requests_to_detect(0.01, 0.03, &defaults), Some(997));
    assert_eq!(requests_to_detect(0.01, 0.04, &defaults), Some(543));
    assert_eq!(requests_to_detect(0.01, 0.05, &defaults), Some(364));
    assert_eq!(requests_to_detect(0.0, 0.05, &defaults), Some(195));
    let looser = AnalysisSettings {
        error_ratio: 1.5,
        error_floor: 0.5,
        ..Default::default()
    };
    assert_eq!(requests_to_detect(0.01, 0.02, &looser), Some(2965));
    // 1% -> 2% with the defaults: at most about 45% of windows, however much traffic.
    for n in [10_000, 1_000_000] {
        let chance = detection_chance(0.01, 0.02, n, &defaults);
        assert!((0.40..0.50).contains(&chance), "{n}: {chance}");
    }
    // Never below min_requests; a better canary is never detected.
    assert_eq!(requests_to_detect(0.0, 0.5, &defaults), Some(100));
    assert_eq!(requests_to_detect(0.02, 0.01, &defaults), None);
    assert_eq!(requests_to_detect(0.01, 0.01, &defaults), None);
    assert_eq!(requests_to_detect(f64::NAN, 0.5, &defaults), None);
}

#[test]
fn significance_alone_takes_the_textbook_sample_size() {
    // The textbook sample size per group for a one-sided two-proportion test:
    // n = (z_a sqrt(2 p q) + z_b sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2, p the mean rate; with
    // z_a = 2.3263 (99%), z_b = 0.8416 (80% power), 1% -> 2%: (0.39991 + 0.14455)^2 / 0.0001
    // = 2964.4, so 2965. With ratio and floor out of the way, requests_to_detect agrees.
    let (p1, p2) = (0.02f64, 0.01f64);
    let p = (p1 + p2) / 2.0;
    let z_a = stats::normal_upper_quantile(0.01);
    let z_b = stats::normal_upper_quantile(0.2);
    let root =
        z_a * (2.0 * p * (1.0 - p)).sqrt() + z_b * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    let textbook = (root * root / ((p1 - p2) * (p1 - p2))).ceil() as u64;
    assert_eq!(textbook, 2965);
    let significance_only = AnalysisSettings {
        error_ratio: 1.0,
        error_floor: 0.0,
        ..Default::default()
    };
    assert_eq!(
        requests_to_detect(0.01, 0.02, &significance_only),
        Some(textbook)
    );
}

/// xorshift64*: a small seeded generator, so that the simulation below is the same every run.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Errors among `n` requests that each fail with chance `rate`.
    fn errors(&mut self, n: u64, rate: f64) -> u64 {
        (0..n).filter(|_| self.unit() < rate).count() as u64
    }
}

/// The share of simulated windows that `judge` fails, with `n` requests per version.
fn simulated_failures(stable_rate: f64, canary_rate: f64, n: u64, windows: u32) -> f64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let settings = AnalysisSettings::default();
    let failed = (0..windows)
        .filter(|_| {
            let canary = at(n, rng.errors(n, canary_rate), ms(1));
            let stable = at(n, rng.errors(n, stable_rate), ms(1));
            judge(&settings, &canary, &stable).outcome == Outcome::Fail
        })
        .count();
    failed as f64 / f64::from(windows)
}

#[test]
fn requests_to_detect_agrees_with_judging_simulated_windows() {
    // The slow, obvious twin of detection_chance: draw windows and ask judge itself. 600
    // windows give the share within about +-0.05 (three standard errors).
    let n = requests_to_detect(0.01, 0.03, &AnalysisSettings::default()).expect("detectable");
    let share = simulated_failures(0.01, 0.03, n, 600);
    assert!((0.75..=0.85).contains(&share), "{n} requests: {share}");
    let share = simulated_failures(0.01, 0.03, n / 3, 600);
    assert!(share < 0.5, "{} requests: {share}", n / 3);
    // 1% -> 2% sits on the edges: under half the windows fail even with plenty of traffic.
    let share = simulated_failures(0.01, 0.02, 20_000, 300);
    assert!((0.35..=0.55).contains(&share), "{share}");
}

// ---- properties ----

/// Figures of every kind: small, huge, empty, more errors than requests, any histogram length.
fn any_figures() -> impl Strategy<Value = Figures> {
    let count = prop_oneof![0u64..300, any::<u64>(), Just(0), Just(u64::MAX)];
    (
        count.clone(),
        count.clone(),
        proptest::collection::vec(count, 0..BUCKETS + 5),
    )
        .prop_map(|(requests, errors, latency)| Figures {
            requests,
            errors,
            latency,
        })
}

fn any_settings() -> impl Strategy<Value = AnalysisSettings> {
    let number = prop_oneof![any::<f64>(), 0.0f64..200.0, Just(f64::NAN)];
    (
        any::<u64>(),
        number.clone(),
        number.clone(),
        number.clone(),
        number.clone(),
        any::<u64>(),
    )
        .prop_map(
            |(min_requests, confidence, ratio, floor, abort, abort_min)| AnalysisSettings {
                min_requests: min_requests % 1000,
                error_statuses: vec![],
                error_confidence: confidence,
                error_ratio: ratio,
                error_floor: floor,
                latency_confidence: confidence,
                latency_ratio: ratio,
                latency_floor: Duration::from_micros(abort_min),
                abort_error_rate: abort,
                abort_min_requests: abort_min % 1000,
            },
        )
}

proptest! {
    #[test]
    fn judge_never_panics_and_its_verdict_holds_together(canary in any_figures(), stable in any_figures()) {
        let settings = AnalysisSettings::default();
        let verdict = judge(&settings, &canary, &stable);
        let joined: Vec<&str> = verdict.checks.iter().map(|c| c.text.as_str()).collect();
        prop_assert_eq!(&verdict.text, &joined.join("; "));
        let short = canary.requests < 100 || stable.requests < 100;
        match verdict.outcome {
            Outcome::Abort => prop_assert!(canary.requests >= 50),
            Outcome::NotEnoughData => prop_assert!(short),
            Outcome::Pass | Outcome::Fail => prop_assert!(!short),
        }
        for check in &verdict.checks {
            if let Some(p) = check.p_value {
                prop_assert!((0.0..=1.0).contains(&p), "{}", p);
            }
        }
        // It goes to JSON whatever the figures (no NaN or infinity to refuse).
        prop_assert!(serde_json::to_string(&verdict).is_ok());
    }

    #[test]
    fn judge_never_panics_on_nonsense_settings(settings in any_settings(), canary in any_figures(), stable in any_figures()) {
        let verdict = judge(&settings, &canary, &stable);
        prop_assert!(!verdict.checks.is_empty());
        let _ = detection_chance(0.01, 0.03, settings.min_requests, &settings);
    }

    #[test]
    fn identical_figures_never_fail(figures in any_figures()) {
        let verdict = judge(&AnalysisSettings::default(), &figures, &figures);
        prop_assert_ne!(verdict.outcome, Outcome::Fail, "{}", verdict.text);
    }

    #[test]
    fn identical_realistic_traffic_never_fails(requests in 100u64..5000, errors in 0u64..20, from in 1u64..50, width in 0u64..200) {
        let mut figures = spread(requests, ms(from), ms(from + width));
        figures.errors = errors;
        let verdict = judge(&AnalysisSettings::default(), &figures, &figures);
        prop_assert_eq!(verdict.outcome, Outcome::Pass, "{}", verdict.text);
    }
}
