//! Prometheus metrics, in graygate's own [`Registry`] (nothing global, so tests and several
//! gateways in one process do not mix).
//!
//! Two kinds of values:
//! - **counted on the request path** ([`Metrics::record`], [`Metrics::connection_opened`]):
//!   requests, latencies, decisions, fallbacks, open connections. Label values are borrowed from
//!   the request record (`&str` out of `Arc<str>`s and static status classes), so a request
//!   formats nothing and allocates nothing once its series exists; the cost is one hashed lookup
//!   per metric family.
//! - **pulled at scrape time** ([`Metrics::render`]) from where they already live ([`Sources`]):
//!   policy revision and last reload, whether the running policy differs from the config file's,
//!   upstream connect failures (of the upstream table in use: a reload that adds servers adds
//!   their series), store and lookup-cache counters, store health, each rollout's state, step,
//!   weight and verdict counts, failed TLS handshakes (counted by the TLS terminator with one
//!   atomic add), the expiry of each certificate in force (so that it follows reloads), and the
//!   listeners' connections, limits and failed accepts (`connections`).
//!   Nothing on the request path pays for them.
//!
//! The pulled values come through small source traits ([`PolicyStatsSource`],
//! [`StoreStatsSource`], [`RolloutStatsSource`], [`TlsStatsSource`]) that say what the metrics
//! read, so that this
//! module, at the end of the request's line, never reaches back to the gateway or the store;
//! `app` adapts those to them.
//!
//! The metric names and labels are listed in `docs/metrics.md`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use prometheus::{
    core::Collector, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::connections::ConnectionMetrics;
use crate::proxy::tls::HandshakeFailure;
use crate::proxy::ConnectionLimit;
use crate::proxy::{LiveUpstreams, MirrorRecord, RequestRecord, ServerState, Upstreams};
use crate::rollout::{Outcome, RolloutState};

/// Upper bounds (seconds) of the latency histograms: from a 1 ms local answer to a 30 s
/// upstream timeout.
pub(super) const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Counters of the store and its lookup cache, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The store's kind (`embedded`, `redis`, `memcached`): the `store` label.
    pub store: &'static str,
    /// Lookups sent to the store since start; `None`: not counted by this store (the series is
    /// not exported).
    pub lookups: Option<u64>,
    /// Lookups that failed since start; `None`: not counted.
    pub errors: Option<u64>,
    /// Lookup-cache hits and misses since start; `None`: no cache in front of the store.
    pub cache: Option<CacheCounts>,
    /// Lookups answered as absent without asking because the key, as the store writes it, is
    /// one its server cannot hold (memcached: over 250 bytes once escaped); `None`: the store
    /// never does that (the series is not exported).
    pub unusable_keys: Option<u64>,
    /// True while the store cannot be reached.
    pub degraded: bool,
    /// How values written by other clients reach the lookup cache (Redis: `tracking`,
    /// `keyspace-events`, `ttl-only`, `disconnected`); `None`: not told (the series is not
    /// exported).
    pub invalidation: Option<&'static str>,
}

/// Every value of [`StoreStats::invalidation`], so that the series of the modes not in force
/// read 0 rather than vanish.
const INVALIDATION_MODES: [&str; 4] = ["tracking", "keyspace-events", "ttl-only", "disconnected"];

/// Counters and size of a lookup cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Lookups answered from a fresh cached entry.
    pub hits: u64,
    /// Lookups that had to ask the store.
    pub misses: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now, as counted toward the cache's byte bound: what shows that large
    /// identities cannot grow it past `cache.max_bytes`.
    pub bytes: u64,
    /// Lookups answered at once as if the store were down because `cache.max_in_flight`
    /// lookups were already waiting for the store.
    pub shed: u64,
    /// Lookups whose key was longer than `cache.max_key_bytes`, answered as no identity.
    pub keys_too_long: u64,
}

/// Where the store metrics come from; read once per scrape.
pub trait StoreStatsSource: Send + Sync + 'static {
    /// The store's counters now. Called on the scrape's task: must not block.
    fn store_stats(&self) -> StoreStats;
}

/// Where the policy metrics come from; read once per scrape.
pub trait PolicyStatsSource: Send + Sync + 'static {
    /// Revision of the running policy (0: none stored).
    fn revision(&self) -> u64;
    /// When the running policy was installed; `None` while none ever was.
    fn last_reload(&self) -> Option<SystemTime>;
    /// Whether the running policy differs from the policy in the config file (runtime changes
    /// the file does not have, or a file edited and not reloaded); `None` when the config has
    /// no policy.
    fn config_differs(&self) -> Option<bool> {
        None
    }
    /// This instance among the others on the store: divergence, a store behind, restores.
    fn fleet(&self) -> FleetStats {
        FleetStats::default()
    }
}

/// What the fleet metrics show, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// The store's revision this instance cannot apply, while it cannot.
    pub diverged: Option<u64>,
    /// True while the store is behind this instance and it does not restore it.
    pub store_behind: bool,
    /// How many times this instance put its policy back into a store that lost it.
    pub restores: u64,
}

/// One service's rollout as the metrics show it, read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutStats {
    /// The service carrying the rollout: the `service` label.
    pub service: String,
    /// Where the rollout is; `None` for a plan written but not started yet (every state series
    /// is then 0).
    pub state: Option<RolloutState>,
    /// The current step, counted from 1 as `rollout status` shows it; 0 before the start.
    pub step: usize,
    /// The canary's weight in the split now, in percent (100 once promoted, 0 once aborted).
    pub weight: f64,
    /// Verdicts this instance recorded for the service since it started, per outcome: only the
    /// instance that drives the rollouts records verdicts, so these add up over instances.
    pub verdicts: [(Outcome, u64); 4],
}

/// Where the rollout metrics come from; read once per scrape.
pub trait RolloutStatsSource: Send + Sync + 'static {
    /// Every service that has a rollout (running or ended), in any order. Called on the
    /// scrape's task: must not block (no store I/O).
    fn rollouts(&self) -> Vec<RolloutStats>;
}

/// A certificate in force, as the expiry metric shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// The certificate file, as configured (resolved against the config's directory): the
    /// `file` label.
    pub file: String,
    /// Its first DNS name, empty when it has none: the `name` label, to tell certificates apart
    /// at a glance.
    pub name: String,
    /// The end of its validity.
    pub not_after: SystemTime,
}

/// Where the TLS metrics come from; read once per scrape.
pub trait TlsStatsSource: Send + Sync + 'static {
    /// Handshakes on the TLS listeners that failed for `reason` since start.
    fn handshake_failures(&self, reason: HandshakeFailure) -> u64;
    /// Every certificate in force now, in config order. Called on the scrape's task: must not
    /// block.
    fn certificates(&self) -> Vec<CertExpiry>;
}

/// What the scrape reads values from. Every part is optional: what is missing is not exported.
#[derive(Default, Clone)]
pub struct Sources {
    /// Policy revision and last reload time.
    pub policy: Option<Arc<dyn PolicyStatsSource>>,
    /// Connect failures of every upstream server, in the table in use at scrape time.
    pub upstreams: Option<Arc<LiveUpstreams>>,
    /// Store lookups, errors, cache hits and misses, degraded state.
    pub store: Option<Arc<dyn StoreStatsSource>>,
    /// Each rollout's state, step, weight and verdict counts.
    pub rollouts: Option<Arc<dyn RolloutStatsSource>>,
    /// Failed TLS handshakes and the certificates in force (with `[tls]`).
    pub tls: Option<Arc<dyn TlsStatsSource>>,
    /// The connection limit of every listener group, with its counters (`connections`).
    pub listeners: Vec<ConnectionLimit>,
}

/// The connect-failure counters of one upstream table, resolved when a scrape first sees the
/// table (at start, and after a reload swapped it) so that other scrapes look up no labels.
#[derive(Default)]
struct TableFailures {
    /// The table they were resolved for.
    table: Option<Arc<Upstreams>>,
    servers: Vec<ServerFailures>,
}

/// A connect-failure counter bound to one upstream server.
struct ServerFailures {
    upstream: usize,
    server: Arc<str>,
    counter: IntCounter,
}

/// Every metric graygate exports. See the module documentation.
pub struct Metrics {
    registry: Registry,
    /// `graygate_requests_total{route, version, status_class}`.
    requests: IntCounterVec,
    /// `graygate_request_duration_seconds{service, version}`: the whole request, body included.
    request_duration: HistogramVec,
    /// `graygate_upstream_duration_seconds{service, version}`: until the upstream's response
    /// headers.
    upstream_duration: HistogramVec,
    /// `graygate_decisions_total{service, version, reason}`.
    decisions: IntCounterVec,
    /// `graygate_policy_notes_total{service, note}`: overrides and followed versions refused,
    /// bucket cookies given or replaced.
    policy_notes: IntCounterVec,
    /// `graygate_fallbacks_total{service, version}`: canary unreachable, stable answered.
    fallbacks: IntCounterVec,
    /// `graygate_unhealthy_fallbacks_total{service, version}`: of those, the ones whose
    /// version had no server in service (not tried at all).
    unhealthy_fallbacks: IntCounterVec,
    /// `graygate_retries_total{service, version}`: requests sent again after their server
    /// died before answering, by the chosen version.
    retries: IntCounterVec,
    /// `graygate_open_connections`.
    open_connections: IntGauge,
    /// `graygate_access_log_dropped_total`: shared with the access log, which counts.
    access_log_dropped: IntCounter,
    /// `graygate_policy_revision`, pulled (registered only with a policy source).
    policy_revision: IntGauge,
    /// `graygate_policy_last_reload_timestamp_seconds`, pulled (likewise).
    policy_last_reload: Gauge,
    /// `graygate_policy_config_differs`, pulled (likewise).
    policy_config_differs: IntGauge,
    /// `graygate_policy_diverged`, `graygate_policy_diverged_revision`,
    /// `graygate_store_behind`, `graygate_store_restores`: pulled (likewise).
    fleet_gauges: [IntGauge; 4],
    /// `graygate_upstream_connect_failures_total{upstream, server}`, pulled.
    connect_failures: IntCounterVec,
    /// Its handles for the servers of the upstream table in use.
    server_failures: Mutex<TableFailures>,
    /// `graygate_upstream_server_healthy{upstream, server}`, pulled: 1 while in service.
    server_healthy: IntGaugeVec,
    /// `graygate_upstream_ejections_total{upstream, server}`, pulled.
    ejections: IntCounterVec,
    /// `graygate_store_lookups_total{store}`, pulled.
    store_lookups: IntCounterVec,
    /// `graygate_store_errors_total{store}`, pulled.
    store_errors: IntCounterVec,
    /// `graygate_store_cache_hits_total{store}`, pulled.
    cache_hits: IntCounterVec,
    /// `graygate_store_cache_misses_total{store}`, pulled.
    cache_misses: IntCounterVec,
    /// `graygate_store_unusable_keys_total{store}`, pulled.
    unusable_keys: IntCounterVec,
    /// `graygate_store_degraded{store}`, pulled.
    store_degraded: IntGaugeVec,
    /// `graygate_store_invalidation{store,mode}`: 1 for the mode in force, pulled.
    store_invalidation: IntGaugeVec,
    /// `graygate_store_cache_entries{store}` and `graygate_store_cache_bytes{store}`, pulled.
    cache_entries: IntGaugeVec,
    cache_bytes: IntGaugeVec,
    /// `graygate_store_lookups_shed_total{store}`, pulled.
    lookups_shed: IntCounterVec,
    /// `graygate_store_lookup_keys_too_long_total{store}`, pulled.
    keys_too_long: IntCounterVec,
    /// `graygate_rollout_state{service, state}`, pulled (registered only with a rollout
    /// source, as the three below).
    rollout_state: IntGaugeVec,
    /// `graygate_rollout_step{service}`, pulled.
    rollout_step: IntGaugeVec,
    /// `graygate_rollout_weight{service}`, pulled.
    rollout_weight: GaugeVec,
    /// `graygate_rollout_verdicts_total{service, outcome}`, pulled.
    rollout_verdicts: IntCounterVec,
    /// `graygate_tls_handshake_failures_total{reason}`, pulled (registered only with a TLS
    /// source, as the one below).
    tls_handshake_failures: IntCounterVec,
    /// `graygate_tls_certificate_expiry_timestamp_seconds{file, name}`, pulled.
    tls_cert_expiry: GaugeVec,
    /// The listener metrics (`connections`), pulled.
    connections: ConnectionMetrics,
    /// The mirror metrics (`mirror`), counted as the data plane tells them.
    mirror: super::mirror::MirrorMetrics,
    /// Where the pulled values come from.
    sources: Sources,
    /// Serializes scrapes: pulled counters are advanced by the difference to the source's value,
    /// which is exact only one scrape at a time. Holds what the last scrape exported that a later
    /// one may have to take away.
    scrape: Mutex<Scraped>,
}

/// What one scrape leaves for the next.
#[derive(Default)]
struct Scraped {
    /// The services whose rollout series were exported: a service whose rollout is gone (the
    /// service or its rollout deleted) has its series removed rather than frozen.
    rollouts: BTreeSet<String>,
}

impl Metrics {
    /// Registers every metric in a new registry. Values pulled at scrape time come from
    /// `sources`.
    pub fn new(sources: Sources) -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(&registry, vec)
        };
        let histogram_vec = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let vec = HistogramVec::new(opts, &["service", "version"]).expect("valid metric");
            register(&registry, vec)
        };
        let requests = counter_vec(
            "graygate_requests_total",
            "Requests answered, by route, version that answered and status class.",
            &["route", "version", "status_class"],
        );
        let request_duration = histogram_vec(
            "graygate_request_duration_seconds",
            "From the request headers read to the last response byte sent, by the version that answered.",
        );
        let upstream_duration = histogram_vec(
            "graygate_upstream_duration_seconds",
            "From the request sent upstream to the upstream's response headers, by the version that answered.",
        );
        let decisions = counter_vec(
            "graygate_decisions_total",
            "Routing decisions, by service, chosen version and reason (rule:<name>, override:always, override:never, split, split:cookie, followed, default).",
            &["service", "version", "reason"],
        );
        let policy_notes = counter_vec(
            "graygate_policy_notes_total",
            "What routing passed over or handed out, by service and note: override_refused:network|secret|expired, follow_refused:untrusted|unknown_version, bucket_cookie:new|replaced.",
            &["service", "note"],
        );
        let fallbacks = counter_vec(
            "graygate_fallbacks_total",
            "Requests whose chosen version could not be reached and that went to stable instead, by service and chosen version.",
            &["service", "version"],
        );
        let unhealthy_fallbacks = counter_vec(
            "graygate_unhealthy_fallbacks_total",
            "Requests whose chosen version had no server in service (health checks, ejection) and that went to stable without trying it, by service and chosen version.",
            &["service", "version"],
        );
        let retries = counter_vec(
            "graygate_retries_total",
            "Idempotent requests sent again because their server died before answering, by service and chosen version.",
            &["service", "version"],
        );
        let open_connections = register(
            &registry,
            IntGauge::new("graygate_open_connections", "Client connections open now.")
                .expect("valid metric"),
        );
        let access_log_dropped = register(
            &registry,
            IntCounter::new(
                "graygate_access_log_dropped_total",
                "Access log records dropped because the writer fell behind.",
            )
            .expect("valid metric"),
        );
        let policy_revision = IntGauge::new(
            "graygate_policy_revision",
            "Revision of the running policy (0: none stored).",
        )
        .expect("valid metric");
        let policy_last_reload = Gauge::new(
            "graygate_policy_last_reload_timestamp_seconds",
            "When the running policy was installed, in seconds since the Unix epoch (0: never).",
        )
        .expect("valid metric");
        let policy_config_differs = IntGauge::new(
            "graygate_policy_config_differs",
            "1 while the running policy differs from the policy in the config file (runtime changes, or a file edited and not reloaded), else 0 (also when the config has no policy).",
        )
        .expect("valid metric");
        let fleet_gauges = [
            (
                "graygate_policy_diverged",
                "1 while this instance cannot apply the store's policy revision (it routes with the last one it applied), else 0.",
            ),
            (
                "graygate_policy_diverged_revision",
                "The store's revision this instance cannot apply (0: none).",
            ),
            (
                "graygate_store_behind",
                "1 while the store holds an older policy revision than this instance applied (or none) and this instance does not restore it (on_store_behind = \"refuse\"), else 0.",
            ),
            (
                "graygate_store_restores",
                "How many times this instance wrote its policy back into a store that had lost it, since start.",
            ),
        ]
        .map(|(name, help)| IntGauge::new(name, help).expect("valid metric"));
        if sources.policy.is_some() {
            register(&registry, policy_revision.clone());
            register(&registry, policy_last_reload.clone());
            register(&registry, policy_config_differs.clone());
            for gauge in &fleet_gauges {
                register(&registry, gauge.clone());
            }
        }
        let connect_failures = counter_vec(
            "graygate_upstream_connect_failures_total",
            "Failed TCP connects to an upstream server, by upstream and server.",
            &["upstream", "server"],
        );
        let server_healthy = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "graygate_upstream_server_healthy",
                    "1 while an upstream server is in service (its health checks pass and it is not ejected), else 0, by upstream and server.",
                ),
                &["upstream", "server"],
            )
            .expect("valid metric"),
        );
        let ejections = counter_vec(
            "graygate_upstream_ejections_total",
            "Passive ejections of an upstream server (failed answers in a row), by upstream and server.",
            &["upstream", "server"],
        );

        // The store's counters, all by store, in the order of their fields.
        let [store_lookups, store_errors, cache_hits, cache_misses, unusable_keys] = [
            (
                "graygate_store_lookups_total",
                "List lookups sent to the store (lookup-cache misses that fetched), by store.",
            ),
            (
                "graygate_store_errors_total",
                "List lookups that failed (store down or too slow, no earlier value known), by store.",
            ),
            (
                "graygate_store_cache_hits_total",
                "Lookups answered by the lookup cache, by store.",
            ),
            (
                "graygate_store_cache_misses_total",
                "Lookups the lookup cache could not answer, by store.",
            ),
            (
                "graygate_store_unusable_keys_total",
                "Lookups answered as not on the list without asking, because the key as the store writes it (escaped, prefixed) is one the store cannot hold, by store.",
            ),
        ]
        .map(|(name, help)| counter_vec(name, help, &["store"]));
        let [lookups_shed, keys_too_long] = [
            (
                "graygate_store_lookups_shed_total",
                "Lookups answered at once as if the store were down, without asking it, because cache.max_in_flight lookups were already waiting for it, by store.",
            ),
            (
                "graygate_store_lookup_keys_too_long_total",
                "Lookups whose key was longer than cache.max_key_bytes, answered as no identity without asking the store, by store.",
            ),
        ]
        .map(|(name, help)| counter_vec(name, help, &["store"]));
        let [cache_entries, cache_bytes] = [
            (
                "graygate_store_cache_entries",
                "Entries held by the lookup cache, by store.",
            ),
            (
                "graygate_store_cache_bytes",
                "Bytes held by the lookup cache (keys, values and per-entry overhead), bounded by cache.max_bytes, by store.",
            ),
        ]
        .map(|(name, help)| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &["store"]).expect("valid metric"),
            )
        });
        let store_invalidation = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "graygate_store_invalidation",
                    "1 for the way values written by other clients reach the lookup cache now (tracking, keyspace-events, ttl-only: stale up to the cache TTL, disconnected), 0 for the others; Redis only.",
                ),
                &["store", "mode"],
            )
            .expect("valid metric"),
        );
        let store_degraded = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "graygate_store_degraded",
                    "1 while the store cannot be reached, else 0, by store.",
                ),
                &["store"],
            )
            .expect("valid metric"),
        );
        let rollout_state = IntGaugeVec::new(
            Opts::new(
                "graygate_rollout_state",
                "1 for the state each service's rollout is in, 0 for the others (progressing, waiting, paused, promoted, aborted).",
            ),
            &["service", "state"],
        )
        .expect("valid metric");
        let rollout_step = IntGaugeVec::new(
            Opts::new(
                "graygate_rollout_step",
                "The current step of each service's rollout, counted from 1 (0: not started yet).",
            ),
            &["service"],
        )
        .expect("valid metric");
        let rollout_weight = GaugeVec::new(
            Opts::new(
                "graygate_rollout_weight",
                "The canary's weight in each rolled-out service's split now, in percent (100 once promoted, 0 once aborted).",
            ),
            &["service"],
        )
        .expect("valid metric");
        let rollout_verdicts = IntCounterVec::new(
            Opts::new(
                "graygate_rollout_verdicts_total",
                "Analysis verdicts recorded by this instance (the one that drives the rollouts), by service and outcome (pass, fail, abort, not_enough_data).",
            ),
            &["service", "outcome"],
        )
        .expect("valid metric");
        if sources.rollouts.is_some() {
            register(&registry, rollout_state.clone());
            register(&registry, rollout_step.clone());
            register(&registry, rollout_weight.clone());
            register(&registry, rollout_verdicts.clone());
        }
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "graygate_tls_handshake_failures_total",
                "TLS handshakes on the TLS listeners that did not complete, by reason (timeout, eof, alert, incompatible, protocol).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let tls_cert_expiry = GaugeVec::new(
            Opts::new(
                "graygate_tls_certificate_expiry_timestamp_seconds",
                "When each certificate in force expires (its notAfter), in seconds since the Unix epoch, by certificate file and first DNS name.",
            ),
            &["file", "name"],
        )
        .expect("valid metric");
        if sources.tls.is_some() {
            register(&registry, tls_handshake_failures.clone());
            register(&registry, tls_cert_expiry.clone());
        }
        let connections = ConnectionMetrics::new(&registry);
        let mirror = super::mirror::MirrorMetrics::new(&registry);
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            decisions,
            policy_notes,
            fallbacks,
            unhealthy_fallbacks,
            retries,
            open_connections,
            access_log_dropped,
            policy_revision,
            policy_last_reload,
            policy_config_differs,
            fleet_gauges,
            connect_failures,
            server_failures: Mutex::new(TableFailures::default()),
            server_healthy,
            ejections,
            store_lookups,
            store_errors,
            cache_hits,
            cache_misses,
            unusable_keys,
            store_degraded,
            store_invalidation,
            cache_entries,
            cache_bytes,
            lookups_shed,
            keys_too_long,
            rollout_state,
            rollout_step,
            rollout_weight,
            rollout_verdicts,
            tls_handshake_failures,
            tls_cert_expiry,
            connections,
            mirror,
            sources,
            scrape: Mutex::new(Scraped::default()),
        }
    }

    /// Counts one finished request. Called on the request path.
    pub fn record(&self, r: &RequestRecord<'_>) {
        let (route, service) = r.choice.map_or(("", ""), |c| (c.route(), c.service()));
        let version = r.version.unwrap_or("");
        self.requests
            .with_label_values(&[route, version, status_class(r.status)])
            .inc();
        self.request_duration
            .with_label_values(&[service, version])
            .observe(r.total.as_secs_f64());
        if let Some(upstream) = r.upstream_headers {
            self.upstream_duration
                .with_label_values(&[service, version])
                .observe(upstream.as_secs_f64());
        }
        if let Some(choice) = r.choice {
            self.decisions
                .with_label_values(&[service, choice.version(), choice.reason.label()])
                .inc();
            if let Some(note) = choice.note {
                self.policy_notes
                    .with_label_values(&[service, note.label()])
                    .inc();
            }
            if r.fell_back {
                self.fallbacks
                    .with_label_values(&[service, choice.version()])
                    .inc();
            }
            if r.unhealthy {
                self.unhealthy_fallbacks
                    .with_label_values(&[service, choice.version()])
                    .inc();
            }
            if r.retried {
                self.retries
                    .with_label_values(&[service, choice.version()])
                    .inc();
            }
        }
    }

    /// Counts what happened to a mirror. Called on the request path and the copies' tasks.
    pub fn mirror(&self, r: &MirrorRecord<'_>) {
        self.mirror.record(r);
    }

    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// A client connection ended.
    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// The counter of dropped access log records, for the access log to count into.
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// Reads the pulled values from their sources and renders every metric in the Prometheus
    /// text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut scraped = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.pull(&mut scraped);
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# graygate: cannot encode metrics: {e}\n"))
    }

    /// Brings the pulled metrics up to date.
    fn pull(&self, scraped: &mut Scraped) {
        if let Some(policy) = &self.sources.policy {
            self.policy_revision
                .set(i64::try_from(policy.revision()).unwrap_or(i64::MAX));
            self.policy_last_reload
                .set(policy.last_reload().map_or(0.0, unix_seconds));
            self.policy_config_differs
                .set(i64::from(policy.config_differs().unwrap_or(false)));
            let fleet = policy.fleet();
            let [diverged, revision, behind, restores] = &self.fleet_gauges;
            diverged.set(i64::from(fleet.diverged.is_some()));
            revision.set(i64::try_from(fleet.diverged.unwrap_or(0)).unwrap_or(i64::MAX));
            behind.set(i64::from(fleet.store_behind));
            restores.set(i64::try_from(fleet.restores).unwrap_or(i64::MAX));
        }
        if let Some(upstreams) = &self.sources.upstreams {
            let table = upstreams.current();
            let mut failures = self
                .server_failures
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !failures
                .table
                .as_ref()
                .is_some_and(|t| Arc::ptr_eq(t, &table))
            {
                failures.servers = self.server_counters(&table);
                failures.table = Some(table.clone());
            }
            for s in &failures.servers {
                if let Some(n) = table.connect_failures(s.upstream, &s.server) {
                    advance(&s.counter, n);
                }
            }
            drop(failures);
            self.pull_health(&table);
        }
        if let Some(source) = &self.sources.store {
            let stats = source.store_stats();
            let label = [stats.store];
            if let Some(n) = stats.lookups {
                advance(&self.store_lookups.with_label_values(&label), n);
            }
            if let Some(n) = stats.errors {
                advance(&self.store_errors.with_label_values(&label), n);
            }
            if let Some(n) = stats.unusable_keys {
                advance(&self.unusable_keys.with_label_values(&label), n);
            }
            if let Some(cache) = stats.cache {
                advance(&self.cache_hits.with_label_values(&label), cache.hits);
                advance(&self.cache_misses.with_label_values(&label), cache.misses);
                advance(&self.lookups_shed.with_label_values(&label), cache.shed);
                advance(
                    &self.keys_too_long.with_label_values(&label),
                    cache.keys_too_long,
                );
                let gauge = |g: &IntGaugeVec, n: u64| {
                    g.with_label_values(&label)
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                };
                gauge(&self.cache_entries, cache.entries);
                gauge(&self.cache_bytes, cache.bytes);
            }
            self.store_degraded
                .with_label_values(&label)
                .set(i64::from(stats.degraded));
            if let Some(now) = stats.invalidation {
                for mode in INVALIDATION_MODES {
                    self.store_invalidation
                        .with_label_values(&[stats.store, mode])
                        .set(i64::from(mode == now));
                }
            }
        }
        if let Some(source) = &self.sources.rollouts {
            self.pull_rollouts(source.rollouts(), scraped);
        }
        if let Some(source) = &self.sources.tls {
            self.pull_tls(source.as_ref());
        }
        self.connections.pull(&self.sources.listeners);
    }

    /// Sets the TLS series: every reason's failures (0 included, so that a rate is defined
    /// from the start), and the expiry of the certificates in force from scratch (a file a
    /// reload took out of `certs` loses its series).
    fn pull_tls(&self, source: &dyn TlsStatsSource) {
        for reason in HandshakeFailure::ALL {
            advance(
                &self
                    .tls_handshake_failures
                    .with_label_values(&[reason.as_str()]),
                source.handshake_failures(reason),
            );
        }
        self.tls_cert_expiry.reset();
        for cert in source.certificates() {
            self.tls_cert_expiry
                .with_label_values(&[cert.file.as_str(), cert.name.as_str()])
                .set(unix_seconds(cert.not_after));
        }
    }

    /// Sets the rollout series from `rollouts`, and removes those of services that no longer
    /// have a rollout.
    fn pull_rollouts(&self, rollouts: Vec<RolloutStats>, scraped: &mut Scraped) {
        // The gauges are set from scratch: a state, step or weight can only be the current one.
        self.rollout_state.reset();
        self.rollout_step.reset();
        self.rollout_weight.reset();
        let mut now = BTreeSet::new();
        for r in &rollouts {
            let service = r.service.as_str();
            for state in RolloutState::ALL {
                self.rollout_state
                    .with_label_values(&[service, state.as_str()])
                    .set(i64::from(r.state == Some(state)));
            }
            self.rollout_step
                .with_label_values(&[service])
                .set(i64::try_from(r.step).unwrap_or(i64::MAX));
            self.rollout_weight
                .with_label_values(&[service])
                .set(r.weight);
            for (outcome, n) in r.verdicts {
                advance(
                    &self
                        .rollout_verdicts
                        .with_label_values(&[service, outcome_label(outcome)]),
                    n,
                );
            }
            now.insert(r.service.clone());
        }
        for gone in scraped.rollouts.difference(&now) {
            for outcome in OUTCOMES {
                let _ = self
                    .rollout_verdicts
                    .remove_label_values(&[gone, outcome_label(outcome)]);
            }
        }
        scraped.rollouts = now;
    }
}

/// Every verdict outcome, for the `outcome` label.
const OUTCOMES: [Outcome; 4] = [
    Outcome::Pass,
    Outcome::Fail,
    Outcome::Abort,
    Outcome::NotEnoughData,
];

/// The `outcome` label of a verdict: its name in the API's JSON (`not_enough_data`).
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Abort => "abort",
        Outcome::NotEnoughData => "not_enough_data",
    }
}

impl Metrics {
    /// Sets the health series from `table`: the gauges from scratch (a server a reload removed
    /// loses its series), the ejection counters advanced. Drained servers (weight 0) are left
    /// out: they are never in service, and that is not a fault.
    fn pull_health(&self, table: &Upstreams) {
        self.server_healthy.reset();
        for index in 0..table.len() {
            let name = table.name(index).unwrap_or_default();
            for s in table.health(index) {
                if s.state == ServerState::Drained {
                    continue;
                }
                let labels = [name, s.addr.as_str()];
                self.server_healthy
                    .with_label_values(&labels)
                    .set(i64::from(s.state == ServerState::Up));
                advance(&self.ejections.with_label_values(&labels), s.ejections);
            }
        }
    }

    /// The connect-failure counter of every server of `table`.
    fn server_counters(&self, table: &Upstreams) -> Vec<ServerFailures> {
        let mut out = Vec::new();
        for index in 0..table.len() {
            let name = table.name(index).unwrap_or_default();
            for server in table.servers(index) {
                out.push(ServerFailures {
                    upstream: index,
                    server: Arc::from(server),
                    counter: self.connect_failures.with_label_values(&[name, server]),
                });
            }
        }
        out
    }
}

/// Registers `metric` in `registry` and gives it back: a name is registered once, at start, so
/// a clash is a bug here rather than a runtime error.
pub(super) fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

/// Sets a counter to a value counted elsewhere. A source that went backwards (restarted) starts
/// the counter over, which Prometheus reads as a counter reset.
pub(super) fn advance(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value >= current {
        counter.inc_by(value - current);
    } else {
        counter.reset();
        counter.inc_by(value);
    }
}

/// `2xx`, `4xx`, ...: the `status_class` label, static so that labelling allocates nothing.
/// Codes above 599 (which hyper lets through) count as `5xx`: not a success either way.
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Seconds since the Unix epoch of `t` (0 before it): for timestamps in gauges.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, DecisionNames, OverrideValue, Reason};
    use http::{Method, Uri};
    use std::time::Duration;

    fn label(reason: &Reason) -> String {
        reason.label().to_string()
    }

    fn rule(name: &str) -> Reason {
        Reason::Rule { name: name.into() }
    }

    #[test]
    fn reasons_become_bounded_labels() {
        assert_eq!(label(&rule("gray-ips")), "rule:gray-ips");
        let always = Reason::Override {
            value: OverrideValue::Always,
        };
        assert_eq!(label(&always), "override:always");
        let never = Reason::Override {
            value: OverrideValue::Never,
        };
        assert_eq!(label(&never), "override:never");
        let sticky = Reason::Split {
            bucket: 1234,
            sticky: true,
        };
        assert_eq!(label(&sticky), "split");
        let random = Reason::Split {
            bucket: 9,
            sticky: false,
        };
        assert_eq!(label(&random), "split");
        assert_eq!(label(&Reason::Default), "default");
    }

    /// The label of a rule is the formatted reason, at any length and for names that are not
    /// ASCII.
    #[test]
    fn rule_labels_match_the_formatted_reason_at_any_length() {
        for n in [0, 1, 127, 128, 300] {
            let name = "r".repeat(n);
            assert_eq!(label(&rule(&name)), format!("rule:{name}"), "length {n}");
        }
        for name in ["grå-ips", "灰度", "🐤 canary"] {
            assert_eq!(label(&rule(name)), format!("rule:{name}"));
            assert_eq!(rule(name).to_string(), format!("rule:{name}"));
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::FOUND), "3xx");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), "5xx");
    }

    fn choice(version: &str, reason: Reason) -> Decision {
        Decision {
            upstream: 1,
            stable_upstream: 0,
            names: DecisionNames::new("web", "web", version, "stable"),
            reason,
            note: None,
            set_cookie: None,
        }
    }

    fn record<'a>(
        method: &'a Method,
        uri: &'a Uri,
        choice: Option<&'a Decision>,
        version: Option<&'a str>,
        status: StatusCode,
        fell_back: bool,
    ) -> RequestRecord<'a> {
        RequestRecord {
            method,
            uri,
            client_ip: "10.0.0.7".parse().unwrap(),
            choice,
            version,
            upstream: version,
            server: Some("127.0.0.1:1"),
            status,
            fell_back,
            unhealthy: false,
            retried: false,
            bytes_sent: 7,
            total: Duration::from_millis(3),
            upstream_headers: choice.map(|_| Duration::from_millis(2)),
        }
    }

    /// The line of `text` for this series, e.g. `graygate_requests_total{...} 2`.
    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn counts_requests_decisions_fallbacks_and_latencies() {
        let m = Metrics::new(Sources::default());
        let (get, uri) = (Method::GET, Uri::from_static("/x"));
        let canary = choice("canary", rule("beta"));
        let split = choice(
            "stable",
            Reason::Split {
                bucket: 4321,
                sticky: true,
            },
        );
        // The decision, the version that answered, the status, whether it fell back.
        for (decision, answered, status, fell_back) in [
            (Some(&canary), Some("canary"), StatusCode::OK, false),
            (Some(&canary), Some("stable"), StatusCode::OK, true),
            (Some(&split), Some("stable"), StatusCode::OK, false),
            (None, None, StatusCode::NOT_FOUND, false),
        ] {
            m.record(&record(&get, &uri, decision, answered, status, fell_back));
        }
        // The canary had no server in service; and a request sent again.
        let mut unhealthy = record(
            &get,
            &uri,
            Some(&canary),
            Some("stable"),
            StatusCode::OK,
            true,
        );
        unhealthy.unhealthy = true;
        m.record(&unhealthy);
        let mut retried = record(
            &get,
            &uri,
            Some(&split),
            Some("stable"),
            StatusCode::OK,
            false,
        );
        retried.retried = true;
        m.record(&retried);
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        let text = m.render();
        // Each series, and the value the scrape must show.
        #[rustfmt::skip]
        let wanted = [
            (r#"graygate_requests_total{route="web",status_class="2xx",version="canary"}"#, Some("1")),
            (r#"graygate_requests_total{route="web",status_class="2xx",version="stable"}"#, Some("4")),
            (r#"graygate_requests_total{route="",status_class="4xx",version=""}"#, Some("1")),
            (r#"graygate_decisions_total{reason="rule:beta",service="web",version="canary"}"#, Some("3")),
            (r#"graygate_decisions_total{reason="split",service="web",version="stable"}"#, Some("2")),
            (r#"graygate_fallbacks_total{service="web",version="canary"}"#, Some("2")),
            (r#"graygate_unhealthy_fallbacks_total{service="web",version="canary"}"#, Some("1")),
            (r#"graygate_retries_total{service="web",version="stable"}"#, Some("1")),
            (r#"graygate_retries_total{service="web",version="canary"}"#, None),
            (r#"graygate_request_duration_seconds_count{service="web",version="stable"}"#, Some("4")),
            (r#"graygate_upstream_duration_seconds_count{service="web",version="canary"}"#, Some("1")),
            // No route: no upstream was asked.
            (r#"graygate_upstream_duration_seconds_count{service="",version=""}"#, None),
            ("graygate_open_connections", Some("1")),
            ("graygate_access_log_dropped_total", Some("0")),
            // Nothing to pull from: not exported rather than a made-up 0.
            ("graygate_policy_revision", None),
        ];
        for (series, wanted) in wanted {
            assert_eq!(value(&text, series).as_deref(), wanted, "{series}");
        }
    }

    struct FakeStore(Mutex<StoreStats>);

    impl StoreStatsSource for FakeStore {
        fn store_stats(&self) -> StoreStats {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn store_stats_are_pulled_at_scrape_time() {
        let source = Arc::new(FakeStore(Mutex::new(StoreStats {
            store: "redis",
            lookups: Some(5),
            errors: Some(1),
            cache: Some(CacheCounts {
                hits: 9,
                misses: 5,
                entries: 3,
                bytes: 4096,
                shed: 2,
                keys_too_long: 7,
            }),
            unusable_keys: Some(2),
            degraded: true,
            invalidation: Some("tracking"),
        })));
        let m = Metrics::new(Sources {
            store: Some(source.clone()),
            ..Sources::default()
        });
        // Series of the redis store, and the value a scrape must show.
        let scraped = |want: &[(&str, &str)]| {
            let text = m.render();
            for (series, wanted) in want {
                let series = format!("graygate_store_{series}{{store=\"redis\"}}");
                assert_eq!(value(&text, &series).as_deref(), Some(*wanted), "{series}");
            }
        };
        scraped(&[
            ("lookups_total", "5"),
            ("errors_total", "1"),
            ("cache_hits_total", "9"),
            ("cache_misses_total", "5"),
            ("unusable_keys_total", "2"),
            ("cache_entries", "3"),
            ("cache_bytes", "4096"),
            ("lookups_shed_total", "2"),
            ("lookup_keys_too_long_total", "7"),
            ("degraded", "1"),
        ]);

        {
            let mut s = source.0.lock().unwrap();
            s.lookups = Some(8);
            s.degraded = false;
        }
        scraped(&[("lookups_total", "8"), ("degraded", "0")]);

        // The invalidation mode: 1 for the one in force, 0 for the others.
        let mode = |mode: &str| {
            let series = format!("graygate_store_invalidation{{mode=\"{mode}\",store=\"redis\"}}");
            value(&m.render(), &series)
        };
        assert_eq!(mode("tracking").as_deref(), Some("1"));
        assert_eq!(mode("ttl-only").as_deref(), Some("0"));
        source.0.lock().unwrap().invalidation = Some("ttl-only");
        assert_eq!(mode("tracking").as_deref(), Some("0"));
        assert_eq!(mode("ttl-only").as_deref(), Some("1"));
    }

    struct FakePolicy(u64, Option<SystemTime>);

    impl PolicyStatsSource for FakePolicy {
        fn revision(&self) -> u64 {
            self.0
        }
        fn last_reload(&self) -> Option<SystemTime> {
            self.1
        }
    }

    /// A policy that differs from the config file's, or not, or with no file policy.
    struct Differs(Option<bool>);

    impl PolicyStatsSource for Differs {
        fn revision(&self) -> u64 {
            1
        }
        fn last_reload(&self) -> Option<SystemTime> {
            None
        }
        fn config_differs(&self) -> Option<bool> {
            self.0
        }
    }

    #[test]
    fn whether_the_running_policy_differs_from_the_files_is_a_gauge() {
        for (differs, want) in [(Some(true), "1"), (Some(false), "0"), (None, "0")] {
            let m = Metrics::new(Sources {
                policy: Some(Arc::new(Differs(differs))),
                ..Sources::default()
            });
            let text = m.render();
            assert_eq!(
                value(&text, "graygate_policy_config_differs").as_deref(),
                Some(want),
                "{differs:?}"
            );
        }
    }

    #[test]
    fn connect_failures_follow_the_upstream_table_a_reload_swaps_in() {
        use crate::proxy::{ServerConfig, Timeouts, UpstreamConfig};
        let config = |name: &str, addr: &str| UpstreamConfig {
            name: name.into(),
            servers: vec![ServerConfig {
                addr: addr.into(),
                weight: 1,
            }],
            ..UpstreamConfig::default()
        };
        let t = Timeouts::default();
        let live = Arc::new(LiveUpstreams::new(vec![config("a", "h:1")], &t).unwrap());
        let m = Metrics::new(Sources {
            upstreams: Some(live.clone()),
            ..Sources::default()
        });
        let series = |u: &str, s: &str| {
            format!("graygate_upstream_connect_failures_total{{server=\"{s}\",upstream=\"{u}\"}}")
        };
        assert_eq!(
            value(&m.render(), &series("a", "h:1")).as_deref(),
            Some("0")
        );
        live.install(
            live.plan(&[config("a", "h:1"), config("b", "h:2")], &t)
                .unwrap(),
        );
        let text = m.render();
        assert_eq!(
            value(&text, &series("b", "h:2")).as_deref(),
            Some("0"),
            "{text}"
        );

        // Every server's health, as the table in use has it: a server a reload removed loses
        // its series.
        let healthy = |u: &str, s: &str| {
            format!("graygate_upstream_server_healthy{{server=\"{s}\",upstream=\"{u}\"}}")
        };
        assert_eq!(value(&text, &healthy("b", "h:2")).as_deref(), Some("1"));
        let ejections = r#"graygate_upstream_ejections_total{server="h:2",upstream="b"}"#;
        assert_eq!(value(&text, ejections).as_deref(), Some("0"));
        live.install(live.plan(&[config("a", "h:1")], &t).unwrap());
        let text = m.render();
        assert_eq!(value(&text, &healthy("a", "h:1")).as_deref(), Some("1"));
        assert_eq!(value(&text, &healthy("b", "h:2")), None, "{text}");
    }

    #[test]
    fn policy_stats_are_pulled_at_scrape_time() {
        let reloaded = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // A running policy, and none ever installed.
        for (source, revision, reload) in [
            (FakePolicy(7, Some(reloaded)), "7", "1700000000"),
            (FakePolicy(0, None), "0", "0"),
        ] {
            let m = Metrics::new(Sources {
                policy: Some(Arc::new(source)),
                ..Sources::default()
            });
            let text = m.render();
            assert_eq!(
                value(&text, "graygate_policy_revision").as_deref(),
                Some(revision)
            );
            assert_eq!(
                value(&text, "graygate_policy_last_reload_timestamp_seconds").as_deref(),
                Some(reload)
            );
        }
    }

    struct FakeRollouts(Mutex<Vec<RolloutStats>>);

    impl RolloutStatsSource for FakeRollouts {
        fn rollouts(&self) -> Vec<RolloutStats> {
            self.0.lock().unwrap().clone()
        }
    }

    fn rollout(
        service: &str,
        state: Option<RolloutState>,
        step: usize,
        weight: f64,
        [pass, fail, abort, short]: [u64; 4],
    ) -> RolloutStats {
        RolloutStats {
            service: service.into(),
            state,
            step,
            weight,
            verdicts: [
                (Outcome::Pass, pass),
                (Outcome::Fail, fail),
                (Outcome::Abort, abort),
                (Outcome::NotEnoughData, short),
            ],
        }
    }

    #[test]
    fn rollouts_are_pulled_at_scrape_time() {
        let source = Arc::new(FakeRollouts(Mutex::new(vec![
            rollout(
                "web",
                Some(RolloutState::Progressing),
                2,
                25.0,
                [3, 1, 0, 2],
            ),
            rollout("api", None, 0, 0.0, [0; 4]),
        ])));
        let m = Metrics::new(Sources {
            rollouts: Some(source.clone()),
            ..Sources::default()
        });
        let scraped = |want: &[(&str, Option<&str>)]| {
            let text = m.render();
            for (series, wanted) in want {
                assert_eq!(value(&text, series).as_deref(), *wanted, "{series}\n{text}");
            }
        };
        #[rustfmt::skip]
        scraped(&[
            (r#"graygate_rollout_state{service="web",state="progressing"}"#, Some("1")),
            (r#"graygate_rollout_state{service="web",state="waiting"}"#, Some("0")),
            (r#"graygate_rollout_state{service="web",state="paused"}"#, Some("0")),
            (r#"graygate_rollout_state{service="web",state="promoted"}"#, Some("0")),
            (r#"graygate_rollout_state{service="web",state="aborted"}"#, Some("0")),
            (r#"graygate_rollout_step{service="web"}"#, Some("2")),
            (r#"graygate_rollout_weight{service="web"}"#, Some("25")),
            (r#"graygate_rollout_verdicts_total{outcome="pass",service="web"}"#, Some("3")),
            (r#"graygate_rollout_verdicts_total{outcome="fail",service="web"}"#, Some("1")),
            (r#"graygate_rollout_verdicts_total{outcome="abort",service="web"}"#, Some("0")),
            (r#"graygate_rollout_verdicts_total{outcome="not_enough_data",service="web"}"#, Some("2")),
            // A plan not started yet: in no state, at step 0.
            (r#"graygate_rollout_state{service="api",state="progressing"}"#, Some("0")),
            (r#"graygate_rollout_step{service="api"}"#, Some("0")),
            (r#"graygate_rollout_verdicts_total{outcome="pass",service="api"}"#, Some("0")),
        ]);

        // web aborted on a failing window; api's rollout was deleted: its series go.
        *source.0.lock().unwrap() = vec![rollout(
            "web",
            Some(RolloutState::Aborted),
            2,
            0.0,
            [3, 3, 0, 2],
        )];
        #[rustfmt::skip]
        scraped(&[
            (r#"graygate_rollout_state{service="web",state="progressing"}"#, Some("0")),
            (r#"graygate_rollout_state{service="web",state="aborted"}"#, Some("1")),
            (r#"graygate_rollout_weight{service="web"}"#, Some("0")),
            (r#"graygate_rollout_verdicts_total{outcome="fail",service="web"}"#, Some("3")),
            (r#"graygate_rollout_verdicts_total{outcome="pass",service="web"}"#, Some("3")),
            (r#"graygate_rollout_state{service="api",state="progressing"}"#, None),
            (r#"graygate_rollout_step{service="api"}"#, None),
            (r#"graygate_rollout_verdicts_total{outcome="pass",service="api"}"#, None),
        ]);
    }

    #[test]
    fn without_a_rollout_source_no_rollout_series() {
        let text = Metrics::new(Sources::default()).render();
        assert!(!text.contains("graygate_rollout_"), "{text}");
    }

    struct FakeTls {
        failures: Mutex<[u64; 5]>,
        certs: Mutex<Vec<CertExpiry>>,
    }

    impl TlsStatsSource for FakeTls {
        fn handshake_failures(&self, reason: HandshakeFailure) -> u64 {
            self.failures.lock().unwrap()[reason as usize]
        }
        fn certificates(&self) -> Vec<CertExpiry> {
            self.certs.lock().unwrap().clone()
        }
    }

    #[test]
    fn tls_failures_and_expiry_are_pulled_at_scrape_time() {
        let cert = |file: &str, name: &str, secs| CertExpiry {
            file: file.into(),
            name: name.into(),
            not_after: UNIX_EPOCH + Duration::from_secs(secs),
        };
        let source = Arc::new(FakeTls {
            failures: Mutex::new([0, 3, 0, 0, 1]),
            certs: Mutex::new(vec![
                cert("/etc/gg/site.pem", "app.example", 1_900_000_000),
                cert("/etc/gg/other.pem", "", 1_800_000_000),
            ]),
        });
        let m = Metrics::new(Sources {
            tls: Some(source.clone()),
            ..Sources::default()
        });
        let scraped = |want: &[(&str, Option<&str>)]| {
            let text = m.render();
            for (series, wanted) in want {
                assert_eq!(value(&text, series).as_deref(), *wanted, "{series}\n{text}");
            }
        };
        #[rustfmt::skip]
        scraped(&[
            (r#"graygate_tls_handshake_failures_total{reason="timeout"}"#, Some("0")),
            (r#"graygate_tls_handshake_failures_total{reason="eof"}"#, Some("3")),
            (r#"graygate_tls_handshake_failures_total{reason="alert"}"#, Some("0")),
            (r#"graygate_tls_handshake_failures_total{reason="incompatible"}"#, Some("0")),
            (r#"graygate_tls_handshake_failures_total{reason="protocol"}"#, Some("1")),
            (r#"graygate_tls_certificate_expiry_timestamp_seconds{file="/etc/gg/site.pem",name="app.example"}"#, Some("1900000000")),
            (r#"graygate_tls_certificate_expiry_timestamp_seconds{file="/etc/gg/other.pem",name=""}"#, Some("1800000000")),
        ]);

        // More failures; a reload renewed one certificate and took the other out.
        *source.failures.lock().unwrap() = [2, 4, 0, 0, 1];
        *source.certs.lock().unwrap() =
            vec![cert("/etc/gg/site.pem", "app.example", 1_950_000_000)];
        #[rustfmt::skip]
        scraped(&[
            (r#"graygate_tls_handshake_failures_total{reason="timeout"}"#, Some("2")),
            (r#"graygate_tls_handshake_failures_total{reason="eof"}"#, Some("4")),
            (r#"graygate_tls_certificate_expiry_timestamp_seconds{file="/etc/gg/site.pem",name="app.example"}"#, Some("1950000000")),
            (r#"graygate_tls_certificate_expiry_timestamp_seconds{file="/etc/gg/other.pem",name=""}"#, None),
        ]);
    }

    #[test]
    fn without_a_tls_source_no_tls_series() {
        let text = Metrics::new(Sources::default()).render();
        assert!(!text.contains("graygate_tls_"), "{text}");
    }

    #[test]
    fn a_pulled_counter_that_goes_back_starts_over() {
        let c = IntCounter::new("c", "c").unwrap();
        advance(&c, 10);
        assert_eq!(c.get(), 10);
        advance(&c, 12);
        assert_eq!(c.get(), 12);
        advance(&c, 3);
        assert_eq!(c.get(), 3);
    }
}
