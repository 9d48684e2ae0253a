//! What graygate tells operators about the traffic: Prometheus metrics and the access log.
//!
//! This is the last stop of a request. The data plane calls one [`Observer`] per request when
//! its response is done ([`crate::proxy::RequestRecord`]), and once per client connection when it
//! opens and closes; [`Observe`] is that observer. It only counts and queues: metrics are atomic
//! counters, the access log is a bounded channel to a writer task, so observing never makes a
//! request wait.
//!
//! # Files
//! - `metrics`: the metrics, their labels, and the values pulled at scrape time (policy
//!   revision, connect failures, store counters, rollouts, TLS handshakes and certificates)
//!   through source traits, so that nothing here reaches back to the gateway or the store. The
//!   list is in `docs/metrics.md`.
//! - `connections`: the listener metrics (connections, limits, failed accepts, out of file
//!   descriptors), pulled from the listeners' own counters.
//! - `mirror`: the traffic mirror's metrics (decisions, copies by status, latency, skips by
//!   reason, in flight, comparisons).
//! - `listener`: the separate HTTP listener that serves `GET /metrics`.
//! - `access_log`: the access log records, their text and JSON formats, the writer task, and
//!   the reopen of its file for log rotation (SIGUSR1).

mod access_log;
mod connections;
mod listener;
mod metrics;
mod mirror;

pub use access_log::{
    AccessLog, AccessLogFormat, AccessLogReopener, AccessLogTarget, AccessLogWriter, AccessRecord,
    ReopenError, Reopened, CHANNEL_CAPACITY, FLUSH_INTERVAL,
};
pub use listener::serve_metrics;
pub use metrics::{
    status_class, CacheCounts, CertExpiry, FleetStats, Metrics, PolicyStatsSource, RolloutStats,
    RolloutStatsSource, Sources, StoreStats, StoreStatsSource, TlsStatsSource, CONTENT_TYPE,
};

use std::sync::Arc;

use crate::proxy::{MirrorRecord, Observer, RequestRecord};

/// The data plane's observer: feeds the metrics and the access log, whichever are on.
pub struct Observe {
    /// Counted into on every request and connection; `None` when no metrics listener is
    /// configured (nobody could read them).
    pub metrics: Option<Arc<Metrics>>,
    /// Receives a record per request; `None` when the access log is off.
    pub log: Option<AccessLog>,
}

impl Observe {
    /// True when neither metrics nor the access log is on: then the proxy is better off with no
    /// observer at all, which costs nothing per request.
    pub fn is_idle(&self) -> bool {
        self.metrics.is_none() && self.log.is_none()
    }
}

impl Observer for Observe {
    fn on_response(&self, record: &RequestRecord<'_>) {
        if let Some(metrics) = &self.metrics {
            metrics.record(record);
        }
        if let Some(log) = &self.log {
            log.record(record);
        }
    }

    fn on_mirror(&self, record: &MirrorRecord<'_>) {
        if let Some(metrics) = &self.metrics {
            metrics.mirror(record);
        }
    }

    fn on_connection_open(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.connection_opened();
        }
    }

    fn on_connection_close(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.connection_closed();
        }
    }
}
