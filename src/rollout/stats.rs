//! The two significance tests of the rollout analysis, one-sided ("is the canary worse than
//! stable?"), on counts graygate already has: no raw samples are kept.
//!
//! - [`two_proportion`]: the two-proportion z test, for error rates.
//! - [`mann_whitney`]: the Mann–Whitney U test on two binned latency histograms. Requests in the
//!   same bucket are ties (each pair counts 1/2), the variance is tie-corrected, and the p-value
//!   comes from the normal approximation with a continuity correction (as textbooks and common
//!   statistics packages do for large samples; a window has at least `min_requests` per version).
//!
//! Both answer a p-value in `[0, 1]` for any counts, including zeros and counts near `u64::MAX`:
//! what cannot be tested (no requests, no spread) answers 1, "no evidence". The normal
//! distribution's tail comes from `libm`'s `erfc`, which stays accurate far into the tail where
//! `1 - cdf` would round to zero.

/// The chance that a standard normal variable is above `z`: the one-sided p-value of a z score.
pub fn normal_upper_tail(z: f64) -> f64 {
    if z.is_nan() {
        return 1.0;
    }
    (0.5 * libm::erfc(z / std::f64::consts::SQRT_2)).clamp(0.0, 1.0)
}

/// The z score whose upper tail is `p` (the inverse of [`normal_upper_tail`]): 2.326 for 0.01,
/// 0.842 for 0.2. Found by bisection, exact to about 1e-12; for sample-size figures, not for the
/// request path. `p` is clamped to `(0, 1)`.
pub fn normal_upper_quantile(p: f64) -> f64 {
    let p = if p.is_nan() {
        0.5
    } else {
        p.clamp(1e-300, 1.0 - 1e-16)
    };
    let (mut low, mut high) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if normal_upper_tail(mid) > p {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// The outcome of a one-sided test: how far the canary is from stable in standard errors, and the
/// chance of a difference at least that large in the canary's disfavour if both were the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    /// The test statistic as a z score: positive when the canary is worse.
    pub z: f64,
    /// The one-sided p-value, in `[0, 1]`.
    pub p: f64,
}

impl TestResult {
    /// Nothing to test: no requests, or no spread to measure a difference against.
    const NO_EVIDENCE: TestResult = TestResult { z: 0.0, p: 1.0 };

    fn from_z(z: f64) -> TestResult {
        if z.is_nan() {
            return Self::NO_EVIDENCE;
        }
        TestResult {
            z,
            p: normal_upper_tail(z),
        }
    }
}

/// One-sided two-proportion z test with the pooled standard error: is the canary's error rate
/// (`canary_errors / canary_requests`) higher than stable's?
///
/// `z = (p_c - p_s) / sqrt(p (1 - p) (1/n_c + 1/n_s))` with `p` the pooled rate. Errors above
/// requests are read as all requests failing. No requests on either side, or a pooled rate of 0 or
/// 1 (nothing to tell apart), is no evidence: p = 1.
pub fn two_proportion(
    canary_errors: u64,
    canary_requests: u64,
    stable_errors: u64,
    stable_requests: u64,
) -> TestResult {
    if canary_requests == 0 || stable_requests == 0 {
        return TestResult::NO_EVIDENCE;
    }
    let (nc, ns) = (canary_requests as f64, stable_requests as f64);
    let (xc, xs) = (
        canary_errors.min(canary_requests) as f64,
        stable_errors.min(stable_requests) as f64,
    );
    let pooled = (xc + xs) / (nc + ns);
    let variance = pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / ns);
    let spread = variance > 0.0; // false for NaN too
    if !spread {
        return TestResult::NO_EVIDENCE;
    }
    TestResult::from_z((xc / nc - xs / ns) / variance.sqrt())
}

/// One-sided Mann–Whitney U test on two histograms with the same buckets: do the canary's
/// requests tend to take longer than stable's?
///
/// `U` counts, over every (canary, stable) pair of requests, 1 when the canary's is in a higher
/// bucket and 1/2 when both are in the same bucket. Under no difference it has mean
/// `n_c n_s / 2` and, with ties, variance `n_c n_s / 12 ((N + 1) - Σ(t³ - t) / (N (N - 1)))`,
/// `t` the requests of both versions in one bucket, `N = n_c + n_s`. `z = (U - mean - 1/2) / sd`
/// (the 1/2 is the continuity correction). Histograms of different lengths are read with zeros
/// for the missing buckets. An empty side, or every request in one bucket, is no evidence: p = 1.
pub fn mann_whitney(canary: &[u64], stable: &[u64]) -> MannWhitney {
    let buckets = canary.len().max(stable.len());
    let count = |histogram: &[u64], i: usize| histogram.get(i).copied().unwrap_or(0) as f64;
    let nc: f64 = canary.iter().map(|n| *n as f64).sum();
    let ns: f64 = stable.iter().map(|n| *n as f64).sum();
    let mut u = 0.0;
    let mut stable_below = 0.0;
    let mut ties = 0.0;
    for i in 0..buckets {
        let (c, s) = (count(canary, i), count(stable, i));
        u += c * (stable_below + 0.5 * s);
        stable_below += s;
        let t = c + s;
        ties += t * t * t - t;
    }
    let test = if nc == 0.0 || ns == 0.0 {
        TestResult::NO_EVIDENCE
    } else {
        let n = nc + ns;
        let mean = nc * ns / 2.0;
        let variance = nc * ns / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
        if variance > 0.0 && variance.is_finite() {
            TestResult::from_z((u - mean - 0.5) / variance.sqrt())
        } else {
            TestResult::NO_EVIDENCE
        }
    };
    MannWhitney { u, test }
}

/// [`mann_whitney`]'s answer: the U statistic (for the canary) and the test on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// Pairs in which the canary's request was slower, ties counting 1/2.
    pub u: f64,
    /// The one-sided test of `u` against its mean under no difference.
    pub test: TestResult,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= tolerance
    }

    #[test]
    fn normal_tail_matches_the_table() {
        // Standard normal table values (any statistics textbook's appendix).
        for (z, tail) in [
            (0.0, 0.5),
            (1.0, 0.158_655_253_9),
            (1.644_853_627, 0.05),
            (2.326_347_874, 0.01),
            (3.090_232_306, 0.001),
            (-1.0, 0.841_344_746_1),
        ] {
            let got = normal_upper_tail(z);
            assert!(close(got, tail, 1e-9), "z={z}: {got} vs {tail}");
            assert!(close(normal_upper_quantile(tail), z, 1e-8), "p={tail}");
        }
        // Far in the tail erfc keeps precision that 1 - cdf would lose.
        assert!(normal_upper_tail(10.0) > 0.0 && normal_upper_tail(10.0) < 1e-22);
        assert_eq!(normal_upper_tail(f64::INFINITY), 0.0);
        assert_eq!(normal_upper_tail(f64::NEG_INFINITY), 1.0);
        assert_eq!(normal_upper_tail(f64::NAN), 1.0);
    }

    #[test]
    fn two_proportion_matches_known_answers() {
        // The design's example, 41/1000 vs 12/4000, worked by hand: pooled p = 53/5000 = 0.0106,
        // se = sqrt(0.0106 * 0.9894 * (1/1000 + 1/4000)) = 0.0036207, z = (0.041 - 0.003) / se =
        // 10.495. The same figure from statsmodels 0.15
        // `proportions_ztest([41, 12], [1000, 4000], alternative="larger")`: z = 10.495175,
        // p = 4.5454e-26.
        let t = two_proportion(41, 1000, 12, 4000);
        assert!(close(t.z, 10.495_175, 1e-6), "{t:?}");
        assert!(close(t.p / 4.5454e-26, 1.0, 1e-4), "{t:?}");

        // A textbook-sized one: 5/100 vs 0/100. By hand: pooled 0.025, se = sqrt(0.025 * 0.975 *
        // 0.02) = 0.022079, z = 0.05 / se = 2.2646; statsmodels: z = 2.26455, p = 0.011770.
        let t = two_proportion(5, 100, 0, 100);
        assert!(close(t.z, 2.26455, 1e-5), "{t:?}");
        assert!(close(t.p, 0.011770, 1e-6), "{t:?}");

        // Canary better than stable: z negative, p above 1/2 (statsmodels: z = -1.853760,
        // p = 0.968113 for 10/500 vs 20/500).
        let t = two_proportion(10, 500, 20, 500);
        assert!(close(t.z, -1.853_760, 1e-6), "{t:?}");
        assert!(close(t.p, 0.968_113, 1e-6), "{t:?}");
    }

    #[test]
    fn two_proportion_without_evidence_answers_one() {
        assert_eq!(two_proportion(0, 0, 0, 100).p, 1.0);
        assert_eq!(two_proportion(0, 100, 0, 0).p, 1.0);
        assert_eq!(two_proportion(0, 100, 0, 100).p, 1.0);
        assert_eq!(two_proportion(100, 100, 100, 100).p, 1.0);
        // More errors than requests reads as every request failing.
        assert_eq!(
            two_proportion(500, 100, 0, 100),
            two_proportion(100, 100, 0, 100)
        );
    }

    #[test]
    fn mann_whitney_matches_the_tortoise_and_the_hare() {
        // Wikipedia's "Mann–Whitney U test" example: 6 tortoises and 6 hares finish in the order
        // T H H H H H T T T T T H; U_T = 11, U_H = 25. Finishing later is "slower": with finish
        // positions as buckets, U for the tortoises being slower is U_H = 25 (each tortoise counts
        // the hares that finished before it). Normal approximation by hand: mean 18, variance
        // 6 * 6 * 13 / 12 = 39, z = (25 - 18 - 0.5) / sqrt(39) = 1.04083, p = 0.14897; scipy
        // 1.17 `mannwhitneyu(t, h, alternative="greater", method="asymptotic")` gives p = 0.14897.
        let order = "THHHHHTTTTTH";
        let tortoises: Vec<u64> = order.chars().map(|c| u64::from(c == 'T')).collect();
        let hares: Vec<u64> = order.chars().map(|c| u64::from(c == 'H')).collect();
        let mw = mann_whitney(&tortoises, &hares);
        assert_eq!(mw.u, 25.0);
        assert!(close(mw.test.z, 1.040_83, 1e-5), "{mw:?}");
        assert!(close(mw.test.p, 0.148_97, 1e-5), "{mw:?}");
        let mw = mann_whitney(&hares, &tortoises);
        assert_eq!(mw.u, 11.0);
    }

    #[test]
    fn mann_whitney_corrects_for_ties_within_buckets() {
        // Binned samples: canary 1,1,2,2,2,3,3,3,3,4 and stable 0,1,1,1,2,2,2,3,3,3 (bucket
        // indexes as values, so every shared bucket is a tie). scipy 1.17
        // `mannwhitneyu(canary, stable, alternative="greater", method="asymptotic")` (tie
        // correction and continuity correction on) gives U = 65.5, p = 0.118129.
        let canary = [0, 2, 3, 4, 1];
        let stable = [1, 3, 3, 3];
        let mw = mann_whitney(&canary, &stable);
        assert_eq!(mw.u, 65.5);
        assert!(close(mw.test.p, 0.118_129, 1e-6), "{mw:?}");
    }

    #[test]
    fn mann_whitney_without_evidence_answers_one() {
        assert_eq!(mann_whitney(&[], &[]).test.p, 1.0);
        assert_eq!(mann_whitney(&[0, 5], &[]).test.p, 1.0);
        // Everything in one bucket: all ties, no spread.
        assert_eq!(mann_whitney(&[0, 5], &[0, 9, 0]).test.p, 1.0);
    }

    #[test]
    fn a_clearly_slower_canary_is_significant() {
        // 100 requests near 1 ms against 100 near 51 ms: every pair is slower, U = n_c n_s.
        let mut stable = vec![0u64; 40];
        let mut canary = vec![0u64; 40];
        stable[16] = 100;
        canary[35] = 100;
        let mw = mann_whitney(&canary, &stable);
        assert_eq!(mw.u, 10_000.0);
        assert!(mw.test.p < 1e-20, "{mw:?}");
    }

    proptest! {
        #[test]
        fn p_values_stay_in_bounds(xc in any::<u64>(), nc in any::<u64>(), xs in any::<u64>(), ns in any::<u64>(),
                                   canary in proptest::collection::vec(any::<u64>(), 0..90),
                                   stable in proptest::collection::vec(any::<u64>(), 0..90)) {
            let t = two_proportion(xc, nc, xs, ns);
            prop_assert!((0.0..=1.0).contains(&t.p), "{:?}", t);
            let mw = mann_whitney(&canary, &stable);
            prop_assert!((0.0..=1.0).contains(&mw.test.p), "{:?}", mw);
        }

        #[test]
        fn p_values_stay_in_bounds_for_small_counts(xc in 0u64..50, nc in 0u64..50, xs in 0u64..50, ns in 0u64..50,
                                                    canary in proptest::collection::vec(0u64..20, 0..90),
                                                    stable in proptest::collection::vec(0u64..20, 0..90)) {
            let t = two_proportion(xc, nc, xs, ns);
            prop_assert!((0.0..=1.0).contains(&t.p), "{:?}", t);
            let mw = mann_whitney(&canary, &stable);
            prop_assert!((0.0..=1.0).contains(&mw.test.p), "{:?}", mw);
        }

        #[test]
        fn identical_samples_are_never_significant(x in 0u64..10_000, n in 0u64..10_000,
                                                   histogram in proptest::collection::vec(0u64..100_000, 0..90)) {
            let t = two_proportion(x.min(n), n, x.min(n), n);
            prop_assert!(t.p >= 0.5, "{:?}", t);
            let mw = mann_whitney(&histogram, &histogram);
            prop_assert!(mw.test.p >= 0.5, "{:?}", mw);
        }
    }
}
