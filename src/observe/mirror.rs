//! The mirror's own metrics (see [`crate::proxy::mirror`]): kept apart from the request metrics
//! so that copies never count as traffic of the version they go to, and registered in the same
//! registry as the rest. Counted as the data plane tells them ([`MirrorRecord`]); label values are
//! borrowed, so nothing is formatted per copy once a series exists.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::metrics::{register, status_class, LATENCY_BUCKETS};
use crate::proxy::{MirrorEvent, MirrorRecord};

/// Every mirror metric; each is labelled by `service` and the mirror `version`.
pub(super) struct MirrorMetrics {
    /// `graygate_mirror_decisions_total{service, version, decision}`: every request of a
    /// mirrored service, `mirrored` when drawn to be copied, else `not_mirrored`.
    decisions: IntCounterVec,
    /// `graygate_mirror_requests_total{service, version, status_class, code}`: copies the
    /// mirror answered.
    requests: IntCounterVec,
    /// `graygate_mirror_duration_seconds{service, version}`: a copy sent to its answer's headers.
    duration: HistogramVec,
    /// `graygate_mirror_skipped_total{service, version, reason}`: copies not made or given up.
    skipped: IntCounterVec,
    /// `graygate_mirror_in_flight{service, version}`: copies running now.
    in_flight: IntGaugeVec,
    /// `graygate_mirror_comparisons_total{service, version, result}`: `match`, `mismatch`,
    /// `not_compared`.
    comparisons: IntCounterVec,
}

impl MirrorMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(registry, vec)
        };
        let duration = register(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "graygate_mirror_duration_seconds",
                    "From a mirror copy sent to the mirror's response headers, by service and mirror version.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["service", "version"],
            )
            .expect("valid metric"),
        );
        let in_flight = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "graygate_mirror_in_flight",
                    "Mirror copies running now, by service and mirror version (at most the mirror's max_in_flight).",
                ),
                &["service", "version"],
            )
            .expect("valid metric"),
        );
        MirrorMetrics {
            decisions: counter_vec(
                "graygate_mirror_decisions_total",
                "Requests of a mirrored service, by service, mirror version and decision (mirrored, not_mirrored).",
                &["service", "version", "decision"],
            ),
            requests: counter_vec(
                "graygate_mirror_requests_total",
                "Mirror copies answered by the mirror, by service, mirror version, status class and status code.",
                &["service", "version", "status_class", "code"],
            ),
            duration,
            skipped: counter_vec(
                "graygate_mirror_skipped_total",
                "Mirror copies not made or given up, by service, mirror version and reason (in_flight, body, method, error, timeout).",
                &["service", "version", "reason"],
            ),
            in_flight,
            comparisons: counter_vec(
                "graygate_mirror_comparisons_total",
                "Mirror answers compared with the primary's (status and body hash), by service, mirror version and result (match, mismatch, not_compared).",
                &["service", "version", "result"],
            ),
        }
    }

    /// Counts one event. Called on the request path and on the copies' tasks.
    pub(super) fn record(&self, r: &MirrorRecord<'_>) {
        let (service, version) = (r.service, r.version);
        match r.event {
            MirrorEvent::Decided { mirrored } => {
                let decision = if mirrored { "mirrored" } else { "not_mirrored" };
                self.decisions
                    .with_label_values(&[service, version, decision])
                    .inc();
            }
            MirrorEvent::Skipped(reason) => self
                .skipped
                .with_label_values(&[service, version, reason.label()])
                .inc(),
            MirrorEvent::Started => self.in_flight.with_label_values(&[service, version]).inc(),
            MirrorEvent::Ended => self.in_flight.with_label_values(&[service, version]).dec(),
            MirrorEvent::Answered { status, latency } => {
                self.requests
                    .with_label_values(&[service, version, status_class(status), status.as_str()])
                    .inc();
                self.duration
                    .with_label_values(&[service, version])
                    .observe(latency.as_secs_f64());
            }
            MirrorEvent::Compared(result) => self
                .comparisons
                .with_label_values(&[service, version, result.label()])
                .inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{Comparison, SkipReason};
    use http::StatusCode;
    use prometheus::TextEncoder;
    use std::time::Duration;

    #[test]
    fn events_become_series() {
        let registry = Registry::new();
        let m = MirrorMetrics::new(&registry);
        let tell = |event| {
            m.record(&MirrorRecord {
                service: "web",
                version: "v2",
                event,
            })
        };
        tell(MirrorEvent::Decided { mirrored: true });
        tell(MirrorEvent::Decided { mirrored: false });
        tell(MirrorEvent::Started);
        tell(MirrorEvent::Started);
        tell(MirrorEvent::Ended);
        tell(MirrorEvent::Skipped(SkipReason::InFlight));
        tell(MirrorEvent::Answered {
            status: StatusCode::NOT_FOUND,
            latency: Duration::from_millis(3),
        });
        tell(MirrorEvent::Compared(Comparison::Mismatch));
        let text = TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            "graygate_mirror_decisions_total{decision=\"mirrored\",service=\"web\",version=\"v2\"} 1",
            "graygate_mirror_decisions_total{decision=\"not_mirrored\",service=\"web\",version=\"v2\"} 1",
            "graygate_mirror_in_flight{service=\"web\",version=\"v2\"} 1",
            "graygate_mirror_skipped_total{reason=\"in_flight\",service=\"web\",version=\"v2\"} 1",
            "graygate_mirror_requests_total{code=\"404\",service=\"web\",status_class=\"4xx\",version=\"v2\"} 1",
            "graygate_mirror_duration_seconds_count{service=\"web\",version=\"v2\"} 1",
            "graygate_mirror_comparisons_total{result=\"mismatch\",service=\"web\",version=\"v2\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
