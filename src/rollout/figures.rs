//! What the rollout analysis counts about one version of a service: requests, errors and a latency
//! histogram.
//!
//! Two shapes of the same numbers:
//! - [`VersionCounters`] lives on the request path. Recording a request is two relaxed atomic adds
//!   (three for an error) and a bucket index computed from the latency's leading zeros: no lock, no
//!   allocation, no floating point. Its counters only grow for the life of the process.
//! - [`Figures`] is a plain copy ([`VersionCounters::snapshot`]) that can be added up across
//!   instances, subtracted from an earlier copy to get one window, judged
//!   ([`judge`](super::analysis::judge)) and stored. Every instance publishes its figures to the
//!   store every second, so they serialize compactly: the histogram is a plain array of counts with
//!   its trailing zeros left off.
//!
//! # The latency buckets
//! Log-spaced, four buckets per doubling, so that a bucket is at most 25% wide whatever the latency:
//! bucket 0 holds everything below 64 µs, then 64, 80, 96, 112, 128, 160, ... µs, up to the last
//! bucket, which holds everything from 2^26 µs (about 67 s) on. [`bucket_of`] finds a bucket with a
//! few integer operations (the position of the highest set bit and the two bits below it), which
//! is what makes counting free on the request path; [`bucket_bounds`] is its inverse.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latencies below this many microseconds all share bucket 0: the gateway cannot tell them apart
/// in a way that matters for a release.
const FIRST_BOUND_LOG2: u32 = 6; // 64 µs
/// Latencies from 2^this microseconds (about 67 s) on share the last bucket: far beyond any
/// upstream timeout worth having.
const LAST_BOUND_LOG2: u32 = 26;
/// Buckets per doubling of the latency, as a power of two (2 bits: 4 buckets).
const SUB_BITS: u32 = 2;

/// How many latency buckets a histogram has: bucket 0 (below 64 µs), four per doubling from 64 µs
/// to 2^26 µs, and the last one (2^26 µs and above).
pub const BUCKETS: usize = 2 + ((LAST_BOUND_LOG2 - FIRST_BOUND_LOG2) << SUB_BITS) as usize;

/// The bucket of a latency: the index into [`Figures::latency`].
///
/// A few integer operations: bucket 0 below 64 µs; above, the exponent of the highest set bit of
/// the latency in microseconds picks the doubling and the next two bits pick one of its four
/// buckets.
#[inline]
pub fn bucket_of(latency: Duration) -> usize {
    // Microseconds in u64 arithmetic (not `as_micros`' u128); saturating, though a u64 of
    // microseconds is half a million years.
    let micros = latency
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(latency.subsec_micros()));
    if micros < 1 << FIRST_BOUND_LOG2 {
        return 0;
    }
    if micros >= 1 << LAST_BOUND_LOG2 {
        return BUCKETS - 1;
    }
    let exponent = 63 - micros.leading_zeros(); // FIRST_BOUND_LOG2 ..< LAST_BOUND_LOG2
    let sub = (micros >> (exponent - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    1 + (((exponent - FIRST_BOUND_LOG2) << SUB_BITS) as usize) + sub as usize
}

/// The latencies bucket `index` holds: from the first bound (included) to the second (excluded;
/// `None` for the last bucket, which has no upper end). An index past the last bucket gets the
/// last bucket's bounds.
pub fn bucket_bounds(index: usize) -> (Duration, Option<Duration>) {
    let lower = |index: usize| -> u64 {
        if index == 0 {
            return 0;
        }
        let i = (index - 1) as u64;
        let exponent = FIRST_BOUND_LOG2 as u64 + (i >> SUB_BITS);
        let sub = i & ((1 << SUB_BITS) - 1);
        ((1 << SUB_BITS) + sub) << (exponent - SUB_BITS as u64)
    };
    let index = index.min(BUCKETS - 1);
    let upper = (index + 1 < BUCKETS).then(|| Duration::from_micros(lower(index + 1)));
    (Duration::from_micros(lower(index)), upper)
}

/// One version's counters on the request path, cumulative since the process started.
///
/// The gateway keeps one per service version and calls [`record`](Self::record) once for every
/// request decided for that version; the publisher copies them with [`snapshot`](Self::snapshot).
/// The request count is not a counter of its own: it is the sum of the histogram, so a snapshot
/// always has as many latencies as requests and recording costs one add fewer.
#[derive(Debug)]
pub struct VersionCounters {
    /// Requests whose status is in the configured error set.
    errors: AtomicU64,
    /// Requests per latency bucket ([`bucket_of`]).
    latency: [AtomicU64; BUCKETS],
}

impl Default for VersionCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl VersionCounters {
    /// All counters at zero.
    pub const fn new() -> Self {
        Self {
            errors: AtomicU64::new(0),
            latency: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    /// Counts one request: its latency, and whether its status counts as an error.
    ///
    /// On the request path: relaxed atomic adds only (no ordering between the counters is
    /// needed: a snapshot is a statistic, not a transaction).
    #[inline]
    pub fn record(&self, status_is_error: bool, latency: Duration) {
        self.latency[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
        if status_is_error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A plain copy of the counters. Taken while requests are being recorded, it may miss an error
    /// whose latency it already has (or the other way round): the error count is capped at the
    /// request count so that the figures always make sense.
    pub fn snapshot(&self) -> Figures {
        let latency: Vec<u64> = self
            .latency
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let requests = latency.iter().fold(0u64, |sum, n| sum.saturating_add(*n));
        let errors = self.errors.load(Ordering::Relaxed).min(requests);
        Figures {
            requests,
            errors,
            latency,
        }
    }
}

/// One version's figures: over a window (a difference of two snapshots), or cumulative (a
/// snapshot). Plain numbers: summed across instances, stored, and judged.
///
/// Serialized as `{"requests":N,"errors":N,"latency":[...]}`, the histogram without its trailing
/// zero buckets; reading restores them, so a read copy always has [`BUCKETS`] buckets (a longer
/// array, from a build with more buckets, has its extra counts folded into the last bucket so that
/// no request is lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Requests counted.
    pub requests: u64,
    /// Of them, answers with a status in the error set.
    pub errors: u64,
    /// Requests per latency bucket ([`bucket_of`]). Code that builds figures by hand may give any
    /// length; every method here reads a missing bucket as zero.
    #[serde(serialize_with = "serialize_trimmed")]
    #[serde(deserialize_with = "deserialize_padded")]
    pub latency: Vec<u64>,
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: vec![0; BUCKETS],
        }
    }
}

impl Figures {
    /// Counts one request, as [`VersionCounters::record`] does (for tests, the demo and figures
    /// built off the request path).
    pub fn record(&mut self, status_is_error: bool, latency: Duration) {
        let bucket = bucket_of(latency);
        if self.latency.len() <= bucket {
            self.latency.resize(BUCKETS.max(bucket + 1), 0);
        }
        self.latency[bucket] = self.latency[bucket].saturating_add(1);
        self.requests = self.requests.saturating_add(1);
        if status_is_error {
            self.errors = self.errors.saturating_add(1);
        }
    }

    /// Adds `other` in (another instance's figures for the same window). Saturating.
    pub fn add(&mut self, other: &Figures) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// What was counted since `earlier` (a snapshot of the same counters taken before).
    ///
    /// When any counter went down, the process that counts restarted in between and its counters
    /// began again from zero: everything it has counted is new, so the result is `self` whole.
    pub fn saturating_sub(&self, earlier: &Figures) -> Figures {
        let bucket = |figures: &Figures, i: usize| figures.latency.get(i).copied().unwrap_or(0);
        let buckets = self.latency.len().max(earlier.latency.len());
        let went_down = self.requests < earlier.requests
            || self.errors < earlier.errors
            || (0..buckets).any(|i| bucket(self, i) < bucket(earlier, i));
        if went_down {
            return self.clone();
        }
        Figures {
            requests: self.requests - earlier.requests,
            errors: self.errors - earlier.errors,
            latency: (0..self.latency.len())
                .map(|i| bucket(self, i) - bucket(earlier, i))
                .collect(),
        }
    }

    /// The share of requests that were errors, from 0 to 1 (0 with no requests; at most 1 even
    /// if hand-built figures have more errors than requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (self.errors.min(self.requests) as f64) / (self.requests as f64)
    }

    /// Requests in the histogram (equal to `requests` for figures taken from counters).
    pub fn latency_samples(&self) -> u64 {
        self.latency
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// The latency below which a share `q` (0 to 1, clamped) of the requests fell, estimated from
    /// the histogram by spreading each bucket's requests evenly over its width (so it can be off
    /// by up to a bucket's width, a quarter of the value); `None` with an empty histogram. The
    /// last bucket has no upper end: a quantile that falls in it is its lower bound (about 67 s).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.latency_samples();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = q * total as f64;
        let mut below = 0.0;
        let mut last = 0;
        for (index, &count) in self.latency.iter().enumerate() {
            if count == 0 {
                continue;
            }
            last = index;
            let count = count as f64;
            if below + count >= rank {
                let (lower, upper) = bucket_bounds(index);
                let Some(upper) = upper else {
                    return Some(lower);
                };
                let within = ((rank - below) / count).clamp(0.0, 1.0);
                return Some(lower + (upper - lower).mul_f64(within));
            }
            below += count;
        }
        // Rounding left the rank a hair above the sum: the top of the last non-empty bucket.
        let (lower, upper) = bucket_bounds(last);
        Some(upper.unwrap_or(lower))
    }
}

/// Writes the histogram without its trailing zero buckets (most windows use a dozen of them).
fn serialize_trimmed<S: Serializer>(latency: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
    let used = latency.iter().rposition(|n| *n != 0).map_or(0, |i| i + 1);
    latency[..used].serialize(serializer)
}

/// Reads a histogram written by [`serialize_trimmed`] back to [`BUCKETS`] buckets.
fn deserialize_padded<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u64>, D::Error> {
    let mut latency = Vec::<u64>::deserialize(deserializer)?;
    if latency.len() > BUCKETS {
        let extra = latency
            .drain(BUCKETS..)
            .fold(0u64, |sum, n| sum.saturating_add(n));
        latency[BUCKETS - 1] = latency[BUCKETS - 1].saturating_add(extra);
    }
    latency.resize(BUCKETS, 0);
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The slow, obvious twin of [`bucket_of`]: the first bucket whose upper bound is above the
    /// latency.
    fn bucket_by_search(latency: Duration) -> usize {
        (0..BUCKETS)
            .find(|&i| bucket_bounds(i).1.is_none_or(|upper| latency < upper))
            .unwrap_or(BUCKETS - 1)
    }

    #[test]
    fn buckets_run_from_below_100us_to_about_a_minute_four_per_doubling() {
        assert_eq!(BUCKETS, 82);
        assert_eq!(
            bucket_bounds(0),
            (Duration::ZERO, Some(Duration::from_micros(64)))
        );
        let starts: Vec<u64> = (1..=9)
            .map(|i| bucket_bounds(i).0.as_micros() as u64)
            .collect();
        assert_eq!(starts, [64, 80, 96, 112, 128, 160, 192, 224, 256]);
        let (last_lower, last_upper) = bucket_bounds(BUCKETS - 1);
        assert_eq!(last_lower, Duration::from_micros(1 << 26));
        assert!(last_lower > Duration::from_secs(60));
        assert_eq!(last_upper, None);
        // Each bucket ends where the next begins, and none is wider than a quarter of its start.
        for i in 1..BUCKETS - 1 {
            let (lower, upper) = bucket_bounds(i);
            let upper = upper.expect("only the last bucket is open");
            assert_eq!(Some(upper), Some(bucket_bounds(i + 1).0));
            assert!(upper.as_micros() * 4 <= lower.as_micros() * 5, "bucket {i}");
        }
    }

    #[test]
    fn bucket_of_puts_each_latency_between_its_bucket_bounds() {
        for (latency, bucket) in [
            (Duration::ZERO, 0),
            (Duration::from_micros(63), 0),
            (Duration::from_micros(64), 1),
            (Duration::from_micros(79), 1),
            (Duration::from_micros(80), 2),
            (Duration::from_micros(127), 4),
            (Duration::from_micros(128), 5),
            (Duration::from_millis(1), 16),
            (Duration::from_secs(60), 80),
            (Duration::from_secs(68), 81),
            (Duration::MAX, 81),
        ] {
            assert_eq!(bucket_of(latency), bucket, "{latency:?}");
        }
    }

    #[test]
    fn counters_snapshot_what_was_recorded() {
        let counters = VersionCounters::new();
        counters.record(false, Duration::from_millis(1));
        counters.record(true, Duration::from_millis(1));
        counters.record(false, Duration::from_millis(50));
        let figures = counters.snapshot();
        let mut expected = Figures::default();
        expected.record(false, Duration::from_millis(1));
        expected.record(true, Duration::from_millis(1));
        expected.record(false, Duration::from_millis(50));
        assert_eq!(figures, expected);
        assert_eq!((figures.requests, figures.errors), (3, 1));
        assert_eq!(figures.latency[bucket_of(Duration::from_millis(1))], 2);
    }

    #[test]
    fn counters_count_every_request_from_many_threads() {
        let counters = std::sync::Arc::new(VersionCounters::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        counters.record(i % 10 == 0, Duration::from_micros(t * 1000 + i));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording thread");
        }
        let figures = counters.snapshot();
        assert_eq!((figures.requests, figures.errors), (40_000, 4_000));
        assert_eq!(figures.latency_samples(), 40_000);
    }

    #[test]
    fn figures_serialize_without_trailing_zero_buckets_and_read_back_whole() {
        let mut figures = Figures::default();
        for _ in 0..3 {
            figures.record(false, Duration::from_micros(70));
        }
        figures.record(true, Duration::from_micros(90));
        let json = serde_json::to_string(&figures).expect("serializes");
        assert_eq!(json, r#"{"requests":4,"errors":1,"latency":[0,3,1]}"#);
        let back: Figures = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back.latency.len(), BUCKETS);
        assert_eq!(back, figures);

        let empty = serde_json::to_string(&Figures::default()).expect("serializes");
        assert_eq!(empty, r#"{"requests":0,"errors":0,"latency":[]}"#);
    }

    #[test]
    fn a_longer_histogram_folds_its_extra_buckets_into_the_last() {
        let mut counts = vec![0u64; BUCKETS + 2];
        counts[0] = 1;
        counts[BUCKETS - 1] = 2;
        counts[BUCKETS + 1] = 3;
        let json = serde_json::json!({"requests": 6, "errors": 0, "latency": counts});
        let figures: Figures = serde_json::from_value(json).expect("reads");
        assert_eq!(figures.latency.len(), BUCKETS);
        assert_eq!(figures.latency[BUCKETS - 1], 5);
        assert_eq!(figures.latency_samples(), 6);
    }

    #[test]
    fn bad_figures_json_is_refused_with_the_reason() {
        let err = serde_json::from_str::<Figures>(r#"{"requests":1,"errors":0,"latency":[-1]}"#)
            .expect_err("negative count");
        assert!(
            err.to_string().contains("invalid value: integer `-1`"),
            "{err}"
        );
        let err = serde_json::from_str::<Figures>(r#"{"requests":1,"errors":0}"#)
            .expect_err("no histogram");
        assert!(err.to_string().contains("missing field `latency`"), "{err}");
    }

    #[test]
    fn add_sums_instances_even_with_different_lengths() {
        let mut a = Figures::default();
        a.record(true, Duration::from_millis(2));
        let b = Figures {
            requests: 2,
            errors: 0,
            latency: vec![2],
        };
        a.add(&b);
        assert_eq!((a.requests, a.errors), (3, 1));
        assert_eq!(a.latency[0], 2);
        assert_eq!(a.latency[bucket_of(Duration::from_millis(2))], 1);

        let mut short = Figures {
            requests: 0,
            errors: 0,
            latency: vec![],
        };
        short.add(&a);
        assert_eq!(short, a);
    }

    #[test]
    fn saturating_sub_gives_the_window_or_everything_after_a_restart() {
        let counters = VersionCounters::new();
        counters.record(false, Duration::from_millis(1));
        let earlier = counters.snapshot();
        counters.record(true, Duration::from_millis(5));
        let window = counters.snapshot().saturating_sub(&earlier);
        let mut expected = Figures::default();
        expected.record(true, Duration::from_millis(5));
        assert_eq!(window, expected);

        // The instance restarted: its new counters are below the baseline; all of it is new.
        let restarted = VersionCounters::new();
        restarted.record(false, Duration::from_millis(9));
        let now = restarted.snapshot();
        assert_eq!(now.saturating_sub(&counters.snapshot()), now);
        // Requests alike but one bucket went down: a restart too.
        let mut moved = counters.snapshot();
        moved.latency[bucket_of(Duration::from_millis(1))] -= 1;
        moved.latency[0] += 1;
        assert_eq!(moved.saturating_sub(&counters.snapshot()), moved);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        assert_eq!(Figures::default().quantile(0.5), None);
        let mut figures = Figures::default();
        // 100 requests in the bucket [896 µs, 1024 µs): the median is its middle.
        for _ in 0..100 {
            figures.record(false, Duration::from_millis(1));
        }
        assert_eq!(figures.quantile(0.5), Some(Duration::from_micros(960)));
        assert_eq!(figures.quantile(0.0), Some(Duration::from_micros(896)));
        assert_eq!(figures.quantile(1.0), Some(Duration::from_micros(1024)));
        // One slow request in a hundred and one: p99 moves into the slow bucket's range only
        // above 100/101.
        figures.record(false, Duration::from_millis(51));
        let p99 = figures.quantile(0.99).expect("has data");
        assert!(p99 < Duration::from_micros(1024), "{p99:?}");
        let top = figures.quantile(0.999).expect("has data");
        assert!(top >= Duration::from_micros(49152), "{top:?}");
        // The open last bucket answers its lower bound.
        let mut slow = Figures::default();
        slow.record(false, Duration::from_secs(120));
        assert_eq!(slow.quantile(0.5), Some(Duration::from_micros(1 << 26)));
    }

    proptest! {
        #[test]
        fn bucket_of_agrees_with_a_search_of_the_bounds(micros in any::<u64>(), small in 0u64..200_000) {
            for latency in [Duration::from_micros(micros), Duration::from_micros(small)] {
                let bucket = bucket_of(latency);
                prop_assert_eq!(bucket, bucket_by_search(latency));
                let (lower, upper) = bucket_bounds(bucket);
                prop_assert!(lower <= latency);
                prop_assert!(upper.is_none_or(|upper| latency < upper));
            }
        }

        #[test]
        fn serialization_round_trips(requests in any::<u64>(), errors in any::<u64>(),
                                     latency in proptest::collection::vec(any::<u64>(), 0..=BUCKETS)) {
            let mut figures = Figures { requests, errors, latency };
            let json = serde_json::to_string(&figures).expect("serializes");
            let back: Figures = serde_json::from_str(&json).expect("reads back");
            figures.latency.resize(BUCKETS, 0);
            prop_assert_eq!(back, figures);
        }

        #[test]
        fn quantiles_never_decrease(latency in proptest::collection::vec(0u64..1000, 0..BUCKETS + 3),
                                    a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
            let figures = Figures { requests: 0, errors: 0, latency };
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(figures.quantile(low) <= figures.quantile(high));
        }
    }
}
