//! Assembles a running graygate from a validated [`Config`]: builds the upstream pools, binds
//! every listener, loads the policy from the store (seeding it) and serves until told to stop.
//!
//! `graygate run` and `graygate demo` both start through here, so the demo exercises the same
//! path an operator runs in production. The [`Reloader`] made here is what SIGHUP and the admin
//! API's `POST /v1/reload` read the config file again with.

use crate::config::{Config, StoreConfig};
use crate::gateway::VerdictTally;
use crate::gateway::{Gateway, GatewayError};
use crate::observe::{
    self, AccessLog, AccessLogFormat, AccessLogTarget, AccessLogWriter, CacheCounts, CertExpiry,
    Metrics, Observe, PolicyStatsSource, RolloutStats, RolloutStatsSource, StoreStats,
    StoreStatsSource, TlsStatsSource,
};
use crate::proxy::tls::{CertError, HandshakeFailure, HttpsRedirect};
use crate::proxy::{self, Front, LiveUpstreams, ProxyConfig, TlsTerminator, UpstreamConfigError};
use crate::reload::Reloader;
use crate::rollout::RolloutState;
use crate::store::{CachedStore, EmbeddedStore, MemcachedStore, RedisStore, Store, StoreError};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why graygate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] GatewayError),
    /// An upstream definition the data plane refuses (a config built in code: a config file
    /// is checked when it is read).
    #[error("{}: {}", .0.field(), .0)]
    Upstreams(#[from] UpstreamConfigError),
    /// A listener could not bind its address (taken, not ours, no permission).
    #[error("{listener} listen {addr}: {source}")]
    Bind {
        /// Which listener: the operator learns which `listen` setting to change.
        listener: Listener,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key of `[tls]` cannot be served (changed since the config was read).
    #[error("tls: {0}")]
    Tls(#[from] CertError),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// graygate's listeners, named in bind errors as the config names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The traffic listeners (`listen`).
    DataPlane,
    /// The TLS traffic listeners (`[tls] listen`).
    Tls,
    /// The admin API (`[admin] listen`).
    Admin,
    /// The Prometheus metrics (`[metrics] listen`).
    Metrics,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Listener::DataPlane => "data plane",
            Listener::Tls => "TLS",
            Listener::Admin => "admin",
            Listener::Metrics => "metrics",
        })
    }
}

/// Binds one listener, naming it in the error.
async fn bind(
    listener: Listener,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        listener,
        addr,
        source,
    };
    let socket = proxy::bind(addr).await.map_err(bind_error)?;
    let bound = socket.local_addr().map_err(bind_error)?;
    Ok((socket, bound))
}

/// A started graygate: its bound addresses and the handles to stop it.
pub struct Running {
    /// The addresses actually bound (port 0 in the config becomes the port the OS chose).
    pub addrs: Vec<SocketAddr>,
    /// The TLS listeners' bound addresses (`[tls] listen`).
    pub tls_addrs: Vec<SocketAddr>,
    pub gateway: Arc<Gateway>,
    /// The metrics listener's bound address, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin API's bound address, when the config has `[admin]`.
    pub admin_addr: Option<SocketAddr>,
    /// Reads the config file again (SIGHUP; the admin API's `POST /v1/reload` uses it too).
    pub reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    /// The traffic listeners and the metrics listener.
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    watcher: JoinHandle<()>,
    /// Reads the certificate files for changes (with `[tls]`).
    cert_watcher: Option<JoinHandle<()>>,
    /// The rollout driver: stopped (its lease given up) at shutdown.
    rollouts: crate::gateway::RolloutsHandle,
    /// Flushed after the listeners stop, so that the last requests are logged.
    access_log: Option<AccessLogWriter>,
}

/// Opens the store a config names. A shared store (Redis, memcached) gets the lookup cache in
/// front; the embedded store answers lookups from memory and needs none. A shared store that
/// cannot be reached yet is not an error: it starts degraded and connects when it can.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Embedded { dir } => return Ok(Arc::new(EmbeddedStore::open(dir)?)),
        StoreConfig::Redis(redis) => Arc::new(RedisStore::connect(redis.clone()).await?),
        StoreConfig::Memcached { memcached, dir } => {
            let policy: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir)?);
            Arc::new(MemcachedStore::connect(memcached.clone(), policy).await?)
        }
    };
    Ok(Arc::new(CachedStore::new(store, config.cache)))
}

/// Starts graygate on `store` (opened from the config by [`open_store`], or handed in by the demo).
///
/// Everything that can refuse the start (the upstreams, the certificates, every listener's
/// address, the access log file) is done before the first store write (the config's policy
/// seeding an empty store): a start that fails leaves the store as it found it.
pub async fn start(config: &Config, store: Arc<dyn Store>) -> Result<Running, StartError> {
    let upstreams = Arc::new(LiveUpstreams::new(
        config.upstreams.clone(),
        &config.timeouts,
    )?);
    // The certificates are loaded before the metrics are made, which read them.
    let terminator = match &config.tls {
        Some(tls) => Some(TlsTerminator::new(&tls.certs)?),
        None => None,
    };
    // The first health check of every checked server, before any listener opens: a server that
    // is down from the start never gets a request.
    upstreams.start_health_checks().await;
    let sockets = Sockets::bind(config).await?;
    if let AccessLogTarget::File(path) = &config.access_log.target {
        if config.access_log.format != AccessLogFormat::Off {
            open_access_log(path).await?;
        }
    }
    let upstream_names = upstreams.current().policy_names();
    let seed = config.policy.as_ref().map(|p| &p.doc);
    // A little above the cache's own bound, so that the cache (which can serve a stale value)
    // answers first.
    let lookup_timeout = config.cache.lookup_timeout + std::time::Duration::from_millis(10);
    let gateway =
        Gateway::start(store, upstream_names, seed, lookup_timeout, config.history).await?;
    let watcher = gateway.spawn_watcher(config.reload_interval);
    let rollouts = gateway.spawn_rollouts(config.rollouts);
    let reloader = Arc::new(Reloader::new(
        config.clone(),
        gateway.clone(),
        upstreams.clone(),
    ));

    let Observation {
        observer,
        metrics,
        access_log,
    } = observation(
        config,
        &gateway,
        &upstreams,
        rollouts.verdicts(),
        terminator.as_ref(),
    )
    .await?;

    // The response header has the same name as the upstream one, or the usual name when the
    // upstream one is off.
    let response_version_header = config.response_version_header.then(|| {
        config
            .version_header
            .clone()
            .unwrap_or(proxy::DEFAULT_VERSION_HEADER)
    });
    let proxy_config = Arc::new(ProxyConfig {
        timeouts: config.timeouts,
        max_header_bytes: config.max_header_bytes,
        client_ip: config.client_ip.clone(),
        version_header: config.version_header.clone(),
        response_version_header,
        observer,
        http2: config.http2,
    });
    let (stop, stopped) = watch::channel(false);
    let shutdown_signal = |stopped: &watch::Receiver<bool>| {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let Sockets {
        metrics: metrics_socket,
        tls: tls_sockets,
        plain: plain_sockets,
        admin: admin_socket,
    } = sockets;
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    let mut metrics_addr = None;
    if let (Some((listener, bound)), Some(metrics)) = (metrics_socket, &metrics) {
        metrics_addr = Some(bound);
        servers.push(tokio::spawn(observe::serve_metrics(
            listener,
            metrics.clone(),
            shutdown_signal(&stopped),
        )));
    }
    // TLS listeners first: a redirect from the plain ones names the first one's bound port.
    let mut tls_addrs = Vec::new();
    let mut cert_watcher = None;
    let mut redirect = None;
    if let (Some(tls), Some(terminator)) = (&config.tls, terminator) {
        reloader.set_tls(terminator.certs().clone());
        cert_watcher = Some(terminator.certs().spawn_watch(tls.watch_interval));
        for (listener, bound) in tls_sockets {
            tls_addrs.push(bound);
            let router: Arc<dyn proxy::Router> = gateway.clone();
            servers.push(tokio::spawn(proxy::serve_front(
                listener,
                Front::Tls(terminator.clone()),
                proxy_config.clone(),
                upstreams.clone(),
                router,
                shutdown_signal(&stopped),
            )));
        }
        if tls.redirect_http {
            redirect = tls_addrs.first().map(|a| HttpsRedirect::to_port(a.port()));
        }
    }
    for (listener, bound) in plain_sockets {
        addrs.push(bound);
        let front = match redirect {
            Some(redirect) => Front::Redirect(redirect),
            None => Front::Plain,
        };
        let router: Arc<dyn proxy::Router> = gateway.clone();
        servers.push(tokio::spawn(proxy::serve_front(
            listener,
            front,
            proxy_config.clone(),
            upstreams.clone(),
            router,
            shutdown_signal(&stopped),
        )));
    }
    // The admin API is served last: once it answers, the traffic listeners are up (`/readyz`).
    let mut admin_addr = None;
    if let (Some(admin), Some((listener, bound))) = (&config.admin, admin_socket) {
        admin_addr = Some(bound);
        let state = crate::admin::AdminState::new(
            gateway.clone(),
            crate::admin::Auth::new(admin.tokens.clone()),
            config.client_ip.clone(),
        )
        .with_reloader(reloader.clone())
        .with_upstreams(upstreams.clone());
        servers.push(tokio::spawn(crate::admin::serve(
            listener,
            state,
            shutdown_signal(&stopped),
        )));
    }
    Ok(Running {
        addrs,
        tls_addrs,
        cert_watcher,
        gateway,
        metrics_addr,
        admin_addr,
        reloader,
        stop,
        servers,
        watcher,
        rollouts,
        access_log,
    })
}

/// Every listener of a config, bound (and its bound address), not yet served.
struct Sockets {
    metrics: Option<(tokio::net::TcpListener, SocketAddr)>,
    tls: Vec<(tokio::net::TcpListener, SocketAddr)>,
    plain: Vec<(tokio::net::TcpListener, SocketAddr)>,
    admin: Option<(tokio::net::TcpListener, SocketAddr)>,
}

impl Sockets {
    /// Binds them all, or fails naming the first that cannot be bound (those bound before it
    /// are closed when they are dropped).
    async fn bind(config: &Config) -> Result<Sockets, StartError> {
        let metrics = match config.metrics.listen {
            Some(addr) => Some(bind(Listener::Metrics, addr).await?),
            None => None,
        };
        let mut tls = Vec::new();
        for addr in config.tls.iter().flat_map(|t| t.listen.iter()) {
            tls.push(bind(Listener::Tls, *addr).await?);
        }
        let mut plain = Vec::new();
        for addr in &config.listen {
            plain.push(bind(Listener::DataPlane, *addr).await?);
        }
        let admin = match &config.admin {
            Some(admin) => Some(bind(Listener::Admin, admin.listen).await?),
            None => None,
        };
        Ok(Sockets {
            metrics,
            tls,
            plain,
            admin,
        })
    }
}

/// Opens (creating it) the access log file once, so that one that cannot be written fails the
/// start before the store is written; the writer opens it again when it starts.
async fn open_access_log(path: &std::path::Path) -> Result<(), StartError> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map(drop)
        .map_err(|source| StartError::AccessLog {
            path: path.to_path_buf(),
            source,
        })
}

/// What observes the traffic: the data plane's observer, and the parts started beside it.
struct Observation {
    /// `None` when neither metrics nor the access log is on: the data plane then pays nothing.
    observer: Option<Arc<dyn proxy::Observer>>,
    /// For the metrics listener, when `[metrics] listen` is set.
    metrics: Option<Arc<Metrics>>,
    /// The access log's writer task, flushed at shutdown.
    access_log: Option<AccessLogWriter>,
}

/// Builds the metrics (only when a listener can serve them) and starts the access log writer.
async fn observation(
    config: &Config,
    gateway: &Arc<Gateway>,
    upstreams: &Arc<LiveUpstreams>,
    verdicts: Arc<VerdictTally>,
    tls: Option<&TlsTerminator>,
) -> Result<Observation, StartError> {
    let metrics = config.metrics.listen.map(|_| {
        Arc::new(Metrics::new(observe::Sources {
            policy: Some(gateway.clone()),
            upstreams: Some(upstreams.clone()),
            // The store's kind and health, and its lookup cache's counters when it has one.
            store: Some(Arc::new(StoreMetrics(gateway.store().clone()))),
            rollouts: Some(Arc::new(RolloutMetrics {
                gateway: gateway.clone(),
                verdicts,
            })),
            tls: tls.map(|t| Arc::new(t.clone()) as Arc<dyn TlsStatsSource>),
        }))
    });
    let (log, writer) = match config.access_log.format {
        AccessLogFormat::Off => (None, None),
        format => {
            let target = &config.access_log.target;
            let dropped = metrics.as_ref().map(|m| m.access_log_dropped());
            let (log, writer) =
                AccessLog::start(format, target, dropped)
                    .await
                    .map_err(|source| StartError::AccessLog {
                        path: match target {
                            AccessLogTarget::File(path) => path.clone(),
                            AccessLogTarget::Stdout => PathBuf::from("-"),
                        },
                        source,
                    })?;
            (Some(log), Some(writer))
        }
    };
    let observe = Observe {
        metrics: metrics.clone(),
        log,
    };
    let observer: Option<Arc<dyn proxy::Observer>> = if observe.is_idle() {
        None
    } else {
        Some(Arc::new(observe))
    };
    Ok(Observation {
        observer,
        metrics,
        access_log: writer,
    })
}

/// The policy metrics read the running revision and its install time from the gateway.
impl PolicyStatsSource for Gateway {
    fn revision(&self) -> u64 {
        Gateway::revision(self)
    }

    fn last_reload(&self) -> Option<SystemTime> {
        Gateway::last_reload(self)
    }

    fn config_differs(&self) -> Option<bool> {
        Gateway::config_differs(self)
    }
}

/// TLS metrics: the terminator's failed handshakes, and the certificates of the set in force
/// (read at each scrape, so a reload shows at the next one).
impl TlsStatsSource for TlsTerminator {
    fn handshake_failures(&self, reason: HandshakeFailure) -> u64 {
        self.failures().get(reason)
    }

    fn certificates(&self) -> Vec<CertExpiry> {
        self.certs()
            .current()
            .certs()
            .iter()
            .map(|c| CertExpiry {
                file: c.files.cert.display().to_string(),
                name: c.names.first().cloned().unwrap_or_default(),
                not_after: c.not_after,
            })
            .collect()
    }
}

/// Store metrics of any store: its kind and health ([`Store::health`]), and for a store with a
/// lookup cache in front ([`CachedStore`]) its lookups, errors, hits and misses.
struct StoreMetrics(Arc<dyn Store>);

impl StoreStatsSource for StoreMetrics {
    fn store_stats(&self) -> StoreStats {
        let cache = self.0.cache_stats();
        StoreStats {
            store: self.0.kind(),
            lookups: cache.map(|s| s.fetches),
            errors: cache.map(|s| s.errors),
            cache: cache.map(|s| CacheCounts {
                hits: s.hits,
                misses: s.misses,
            }),
            degraded: self.0.health().degraded,
        }
    }
}

/// Rollout metrics: the state, step and weight of every rollout in the running policy (the
/// same on every instance), and the verdicts this instance's driver counted.
struct RolloutMetrics {
    gateway: Arc<Gateway>,
    verdicts: Arc<VerdictTally>,
}

impl RolloutStatsSource for RolloutMetrics {
    fn rollouts(&self) -> Vec<RolloutStats> {
        let policy = self.gateway.policy();
        policy
            .doc()
            .services
            .iter()
            .filter_map(|s| {
                let rollout = s.rollout.as_ref()?;
                let status = rollout.status.as_ref();
                let state = status.map(|st| st.state);
                // As `rollout status` shows it: once promoted, the version is stable and takes
                // every request the rules leave.
                let weight = if state == Some(RolloutState::Promoted) {
                    100.0
                } else {
                    s.split
                        .as_ref()
                        .and_then(|split| split.weights.get(&rollout.version))
                        .copied()
                        .unwrap_or(0.0)
                };
                Some(RolloutStats {
                    service: s.name.clone(),
                    state,
                    step: status.map_or(0, |st| st.step + 1),
                    weight,
                    verdicts: self.verdicts.of(&s.name),
                })
            })
            .collect()
    }
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and returns when every listener is done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for server in self.servers {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "listener ended with an error"),
                Err(e) => tracing::warn!(error = %e, "listener task failed"),
            }
        }
        self.watcher.abort();
        if let Some(cert_watcher) = self.cert_watcher {
            cert_watcher.abort();
        }
        self.rollouts.stop().await;
        if let Some(access_log) = self.access_log {
            access_log.finish().await;
        }
    }
}
