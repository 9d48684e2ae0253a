//! The listener metrics: per listener group (`data`, `admin`, `metrics`), the connections open and
//! the limit, how often the limit stopped accepting, and the failures of `accept(2)` by reason;
//! and the upstream connects that found no file descriptor left; and the connections each data
//! plane worker accepted.
//!
//! Kept apart from the request metrics (`metrics`) because they are about graygate's own
//! resources, not the traffic: they are what tells "out of file descriptors" from "upstream
//! down". All pulled at scrape time from the counters the listeners keep
//! ([`crate::proxy::ConnectionLimit`]); nothing on the accept path pays for them.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::metrics::{advance, register};
use crate::proxy::listen::{AcceptFailure, ConnectionLimit};

/// The listener metric families.
pub(super) struct ConnectionMetrics {
    /// `graygate_listener_connections{listener}`.
    open: IntGaugeVec,
    /// `graygate_listener_max_connections{listener}`.
    max: IntGaugeVec,
    /// `graygate_listener_limit_reached_total{listener}`.
    limited: IntCounterVec,
    /// `graygate_accept_errors_total{listener, reason}`.
    accept_errors: IntCounterVec,
    /// `graygate_upstream_connect_fd_limit_total`.
    upstream_fd_limit: IntCounter,
    /// `graygate_worker_connections_total{worker}`.
    worker_connections: IntCounterVec,
}

impl ConnectionMetrics {
    /// Registers the families in `registry`.
    pub(super) fn new(registry: &Registry) -> ConnectionMetrics {
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["listener"]).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        ConnectionMetrics {
            open: gauge(
                "graygate_listener_connections",
                "Connections open now, by listener group (data: the plain and TLS traffic listeners together; admin; metrics).",
            ),
            max: gauge(
                "graygate_listener_max_connections",
                "The connection limit of each listener group (max_connections); at it, new clients wait in the listen backlog.",
            ),
            limited: counter(
                "graygate_listener_limit_reached_total",
                "Times a listener group reached its connection limit and stopped accepting until a connection closed, by listener.",
                &["listener"],
            ),
            accept_errors: counter(
                "graygate_accept_errors_total",
                "Failed accepts, by listener and reason (fd_limit: no file descriptor left, accepting paused; connection: the client went away in the backlog; other).",
                &["listener", "reason"],
            ),
            upstream_fd_limit: register(
                registry,
                IntCounter::new(
                    "graygate_upstream_connect_fd_limit_total",
                    "Upstream connects that failed because graygate had no file descriptor left: not counted as the server's connect failures, and no server is marked down for them.",
                )
                .expect("valid metric"),
            ),
            worker_connections: counter(
                "graygate_worker_connections_total",
                "Client connections accepted by each data plane worker (plain and TLS), by worker index: how the kernel spreads them over the workers' listening sockets.",
                &["worker"],
            ),
        }
    }

    /// Brings the series up to date from the listeners' counters.
    pub(super) fn pull(&self, limits: &[ConnectionLimit]) {
        for limit in limits {
            for (worker, accepted) in limit.accepted_by_worker().into_iter().enumerate() {
                let worker = worker.to_string();
                advance(
                    &self
                        .worker_connections
                        .with_label_values(&[worker.as_str()]),
                    accepted,
                );
            }
            let stats = limit.stats();
            let name = [stats.listener];
            self.open
                .with_label_values(&name)
                .set(i64::try_from(stats.open).unwrap_or(i64::MAX));
            self.max
                .with_label_values(&name)
                .set(i64::try_from(stats.max).unwrap_or(i64::MAX));
            advance(&self.limited.with_label_values(&name), stats.limited);
            for kind in AcceptFailure::ALL {
                advance(
                    &self
                        .accept_errors
                        .with_label_values(&[stats.listener, kind.as_str()]),
                    stats.failures(kind),
                );
            }
        }
        advance(
            &self.upstream_fd_limit,
            crate::proxy::local_fd_limit_failures(),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::observe::{Metrics, Sources};
    use crate::proxy::ConnectionLimit;

    #[test]
    fn every_listener_group_is_exported_with_its_limit_and_failures() {
        let data = ConnectionLimit::new("data", 100);
        let admin = ConnectionLimit::new("admin", 8);
        let metrics = Metrics::new(Sources {
            listeners: vec![data, admin],
            ..Sources::default()
        });
        let text = metrics.render();
        for line in [
            "graygate_listener_connections{listener=\"data\"} 0",
            "graygate_listener_max_connections{listener=\"data\"} 100",
            "graygate_listener_max_connections{listener=\"admin\"} 8",
            "graygate_listener_limit_reached_total{listener=\"admin\"} 0",
            "graygate_accept_errors_total{listener=\"data\",reason=\"fd_limit\"} 0",
            "graygate_accept_errors_total{listener=\"admin\",reason=\"connection\"} 0",
            "graygate_accept_errors_total{listener=\"data\",reason=\"other\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(
            text.contains("\ngraygate_upstream_connect_fd_limit_total "),
            "{text}"
        );
        assert!(!text.contains("listener=\"metrics\""), "{text}");
    }

    #[test]
    fn the_connections_of_each_data_plane_worker_are_exported() {
        let data = ConnectionLimit::of_workers("data", 100, 2);
        let admin = ConnectionLimit::new("admin", 8);
        let metrics = Metrics::new(Sources {
            listeners: vec![data, admin],
            ..Sources::default()
        });
        let text = metrics.render();
        for line in [
            "graygate_worker_connections_total{worker=\"0\"} 0",
            "graygate_worker_connections_total{worker=\"1\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        // The admin listener runs on the main runtime: no worker of its own.
        let workers = text
            .lines()
            .filter(|l| l.starts_with("graygate_worker_connections_total{"))
            .count();
        assert_eq!(workers, 2, "{text}");
    }
}
