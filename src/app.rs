//! Assembles a running graygate from a validated [`Config`]: builds the upstream pools, binds
//! every listener, loads the policy from the store (seeding it) and serves until told to stop.
//!
//! `graygate run` and `graygate demo` both start through here, so the demo exercises the same
//! path an operator runs in production. The [`Reloader`] made here is what SIGHUP and the admin
//! API's `POST /v1/reload` read the config file again with; SIGUSR1 reopens the access log file
//! through [`Running::reopen_logs_on_sigusr1`].

use crate::config::{Config, StoreConfig};
use crate::gateway::VerdictTally;
use crate::gateway::{Gateway, GatewayError};
use crate::observe::{
    self, AccessLog, AccessLogFormat, AccessLogReopener, AccessLogTarget, AccessLogWriter,
    CacheCounts, CertExpiry, Metrics, Observe, PolicyStatsSource, Reopened, RolloutStats,
    RolloutStatsSource, StoreStats, StoreStatsSource, TlsStatsSource,
};
use crate::proxy::listen::{ConnectionLimit, DEFAULT_ADMIN_MAX_CONNECTIONS};
use crate::proxy::tls::{CertError, HandshakeFailure, HttpsRedirect};
use crate::proxy::{self, Front, LiveUpstreams, ProxyConfig, TlsTerminator, UpstreamConfigError};
use crate::reload::Reloader;
use crate::rollout::RolloutState;
use crate::store::{CachedStore, EmbeddedStore, MemcachedStore, RedisStore, Store, StoreError};
use crate::upgrade::{self, Inheritance, Said, Successor, UpgradeError};
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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
    /// A process started by an upgrade could not take over from the old one.
    #[error("upgrade: {0}")]
    Upgrade(#[from] UpgradeError),
    /// `GRAYGATE_WORKERS` is set to something that is not a number of workers.
    #[error("{WORKERS_ENV} must be a whole number of at least 1, not `{0}`")]
    WorkersEnv(String),
    /// A data plane worker thread could not be started (the system's thread limit).
    #[error("cannot start data plane worker {index}: {source}")]
    Worker {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Overrides the config's `workers` (a container's CPU share is often known only where it
/// runs).
pub const WORKERS_ENV: &str = "GRAYGATE_WORKERS";

/// The number of data plane workers: [`WORKERS_ENV`], else the config's `workers`, else one
/// per core.
pub fn worker_count(config: &Config) -> Result<usize, StartError> {
    workers_from(std::env::var(WORKERS_ENV).ok(), config.workers)
}

/// [`worker_count`] from the environment's value and the config's.
fn workers_from(env: Option<String>, configured: Option<usize>) -> Result<usize, StartError> {
    let configured = match env {
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(StartError::WorkersEnv(text)),
        },
        None => configured,
    };
    Ok(proxy::workers::resolve(configured))
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

impl Listener {
    /// Its name in the keys of sockets handed to an upgrade's new process.
    fn key(self) -> &'static str {
        match self {
            Listener::DataPlane => "plain",
            Listener::Tls => "tls",
            Listener::Admin => "admin",
            Listener::Metrics => "metrics",
        }
    }
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

/// One bound listener: the socket to serve, its bound address, and a copy of it to hand to an
/// upgrade's new process under its key.
struct Bound {
    listener: proxy::listen::Listener,
    addr: SocketAddr,
    handed: (String, OwnedFd),
}

/// Binds one listener with the config's `listen_backlog`, naming it in the error; or takes the one an upgrade's old process handed
/// over for the same configured address, so that no connection is refused in between.
async fn bind(
    listener: Listener,
    addr: SocketAddr,
    backlog: u32,
    inherited: &Inheritance,
) -> Result<Bound, StartError> {
    let bind_error = |source| StartError::Bind {
        listener,
        addr,
        source,
    };
    let key = upgrade::listener_key(listener.key(), addr);
    let socket = match inherited.take_listener(&key) {
        // Made non-blocking by `Listener::from_std`.
        Some(socket) => proxy::listen::Listener::from_std(socket),
        None => proxy::bind(addr, backlog),
    }
    .map_err(bind_error)?;
    let bound = socket.local_addr().map_err(bind_error)?;
    let copy = socket.as_fd().try_clone_to_owned().map_err(bind_error)?;
    Ok(Bound {
        listener: socket,
        addr: bound,
        handed: (key, copy),
    })
}

/// The listening sockets of one data plane address: one per worker when they could be bound so,
/// else those an upgrade's old process handed over (see `proxy::workers`). Not yet taken by a
/// runtime: each worker takes its own.
struct Group {
    /// Which listener, for errors.
    listener: Listener,
    sockets: Vec<std::net::TcpListener>,
    /// The bound address (port 0 in the config becomes the port the OS chose).
    addr: SocketAddr,
}

/// Binds the sockets of one data plane address for `workers` workers
/// ([`proxy::listen::bind_each`]), or takes every one an upgrade's old process handed over for
/// it. Inherited sockets with `SO_REUSEPORT` get company up to one per worker; inherited ones
/// without it (an old process with one worker) are shared by the workers.
fn bind_group(
    listener: Listener,
    addr: SocketAddr,
    backlog: u32,
    workers: usize,
    inherited: &Inheritance,
    handed: &mut Vec<(String, OwnedFd)>,
) -> Result<Group, StartError> {
    let bind_error = |source| StartError::Bind {
        listener,
        addr,
        source,
    };
    let key = upgrade::listener_key(listener.key(), addr);
    let mut sockets = inherited.take_listeners(&key);
    if sockets.is_empty() {
        sockets = proxy::bind_each(addr, backlog, workers).map_err(bind_error)?;
    } else if sockets.len() < workers && proxy::listen::has_reuse_port(&sockets[0]) {
        let at = sockets[0].local_addr().map_err(bind_error)?;
        while sockets.len() < workers {
            sockets.push(proxy::listen::bind_std(at, backlog, true).map_err(bind_error)?);
        }
    }
    for socket in &sockets {
        socket.set_nonblocking(true).map_err(bind_error)?;
        let copy = socket.as_fd().try_clone_to_owned().map_err(bind_error)?;
        handed.push((key.clone(), copy));
    }
    let bound = sockets[0].local_addr().map_err(bind_error)?;
    Ok(Group {
        listener,
        sockets,
        addr: bound,
    })
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
    /// Renews this instance's record in the fleet view; stopped, and the record removed, at
    /// shutdown.
    heartbeat: JoinHandle<()>,
    /// The rollout driver: stopped (its lease given up) at shutdown, or when an upgrade hands
    /// the store over.
    rollouts: Option<crate::gateway::RolloutsHandle>,
    /// What the rollout driver is started with again when an upgrade fails.
    driver: crate::gateway::DriverConfig,
    /// The verdict counts the metrics read, kept by a driver started again.
    verdicts: Arc<VerdictTally>,
    /// The policy watcher's full-reload interval, for a watcher started again.
    reload_interval: Duration,
    /// Flushed after the listeners stop, so that the last requests are logged.
    access_log: Option<AccessLogWriter>,
    /// A copy of every listening socket, with its key, to hand to an upgrade's new process.
    handed: Vec<(String, OwnedFd)>,
    /// Turned on when the listeners are handed over: HTTP/1.1 answers close their connections.
    draining: proxy::Draining,
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

/// The store `graygate import` writes to: [`open_store`], except that a memcached store whose
/// embedded policy store is held by a running graygate is opened without it. The lists live in
/// memcached, so the import goes on while graygate serves; the keys are then checked against
/// the config's policy, which the caller is told by `true`.
pub async fn open_store_for_import(config: &Config) -> Result<(Arc<dyn Store>, bool), StoreError> {
    let StoreConfig::Memcached { memcached, dir } = &config.store else {
        return Ok((open_store(config).await?, false));
    };
    let (policy, held): (Arc<dyn Store>, bool) = match EmbeddedStore::open(dir) {
        Ok(store) => (Arc::new(store), false),
        Err(e)
            if matches!(
                e.cause::<redb::Error>(),
                Some(redb::Error::DatabaseAlreadyOpen)
            ) =>
        {
            (
                Arc::new(crate::store::held::HeldElsewhere::new(dir.clone())),
                true,
            )
        }
        Err(e) => return Err(e),
    };
    let store = MemcachedStore::connect(memcached.clone(), policy).await?;
    Ok((Arc::new(store), held))
}

/// Starts graygate on `store` (opened from the config by [`open_store`], or handed in by the demo).
///
/// Everything that can refuse the start (the upstreams, the certificates, every listener's
/// address, the access log file) is done before the first store write (the config's policy
/// seeding an empty store): a start that fails leaves the store as it found it.
pub async fn start(config: &Config, store: Arc<dyn Store>) -> Result<Running, StartError> {
    start_with(config, &Inheritance::default(), async { Ok(store) }).await
}

/// [`start`] with the listening sockets an upgrade's old process handed over (the others are
/// bound), and the store opened by `store` once everything else that can refuse the start is
/// done: a new process asks the old one to let go of the store only then.
pub async fn start_with(
    config: &Config,
    inherited: &Inheritance,
    store: impl Future<Output = Result<Arc<dyn Store>, StartError>>,
) -> Result<Running, StartError> {
    let workers = worker_count(config)?;
    // Before the upstream pools are made: they keep idle connections per worker.
    proxy::workers::set_count(workers);
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
    let limits = ListenerLimits::of(config, workers);
    let sockets = Sockets::bind(config, workers, inherited).await?;
    if let AccessLogTarget::File(path) = &config.access_log.target {
        if config.access_log.format != AccessLogFormat::Off {
            open_access_log(path).await?;
        }
    }
    // The table the gateway rebuilds when the policy's upstreams change: the config's
    // upstreams overlaid by the policy's, whose relative file paths are read from the config's
    // directory.
    let table = crate::gateway::EffectiveUpstreams::new(
        upstreams.clone(),
        config.upstreams.clone(),
        config.timeouts,
        config
            .file
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
    );
    let seed = config.policy.as_ref().map(|p| &p.doc);
    // A little above the cache's own bound, so that the cache (which can serve a stale value)
    // answers first.
    let lookup_timeout = config.cache.lookup_timeout + std::time::Duration::from_millis(10);
    let store = store.await?;
    let gateway = Gateway::start_in_fleet(
        store,
        table,
        seed,
        lookup_timeout,
        config.history,
        &config.fleet,
    )
    .await?;
    let watcher = gateway.spawn_watcher(config.reload_interval);
    let rollouts = gateway.spawn_rollouts(config.rollouts);
    let verdicts = rollouts.verdicts();
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
        verdicts.clone(),
        terminator.as_ref(),
        &limits,
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
        connections: limits.data.clone(),
        draining: proxy::Draining::default(),
    });
    let draining = proxy_config.draining.clone();
    let (stop, stopped) = watch::channel(false);
    let Sockets {
        metrics: metrics_socket,
        tls: tls_sockets,
        plain: plain_sockets,
        admin: admin_socket,
        handed,
    } = sockets;
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    let mut metrics_addr = None;
    if let (Some((listener, bound)), Some(metrics)) = (metrics_socket, &metrics) {
        metrics_addr = Some(bound);
        servers.push(tokio::spawn(observe::serve_metrics(
            listener,
            metrics.clone(),
            limits.metrics.clone(),
            shutdown_signal(&stopped),
        )));
    }
    // TLS listeners first: a redirect from the plain ones names the first one's bound port.
    let mut tls_addrs = Vec::new();
    let mut cert_watcher = None;
    let mut redirect = None;
    let mut data_plane = Vec::new();
    if let (Some(tls), Some(terminator)) = (&config.tls, terminator) {
        reloader.set_tls(terminator.certs().clone());
        cert_watcher = Some(terminator.certs().spawn_watch(tls.watch_interval));
        for group in tls_sockets {
            tls_addrs.push(group.addr);
            data_plane.push((group, Front::Tls(terminator.clone())));
        }
        if tls.redirect_http {
            redirect = tls_addrs.first().map(|a| HttpsRedirect::to_port(a.port()));
        }
    }
    for group in plain_sockets {
        addrs.push(group.addr);
        let front = match redirect {
            Some(redirect) => Front::Redirect(redirect),
            None => Front::Plain,
        };
        data_plane.push((group, front));
    }
    let plane = DataPlane {
        cfg: proxy_config.clone(),
        upstreams: upstreams.clone(),
        router: gateway.clone(),
    };
    servers.extend(serve_data_plane(data_plane, workers, plane, &stopped)?);
    // The admin API is served last: once it answers, the traffic listeners are up (`/readyz`).
    let mut admin_addr = None;
    if let (Some(admin), Some((listener, bound))) = (&config.admin, admin_socket) {
        admin_addr = Some(bound);
        let state = crate::admin::AdminState::with_session_ttl(
            gateway.clone(),
            crate::admin::Auth::new(admin.tokens.clone()),
            config.client_ip.clone(),
            admin.session_ttl,
        )
        .with_reloader(reloader.clone())
        .with_upstreams(upstreams.clone());
        servers.push(tokio::spawn(crate::admin::serve(
            listener,
            state,
            crate::admin::AdminLimits {
                connections: limits.admin.clone(),
                header_timeout: admin.header_timeout,
            },
            shutdown_signal(&stopped),
        )));
    }
    gateway.set_addresses(
        admin_addr.map(|a| a.to_string()),
        addrs
            .iter()
            .chain(&tls_addrs)
            .map(|a| a.to_string())
            .collect(),
    );
    let heartbeat = gateway.spawn_heartbeat();
    Ok(Running {
        addrs,
        tls_addrs,
        cert_watcher,
        heartbeat,
        gateway,
        metrics_addr,
        admin_addr,
        reloader,
        stop,
        servers,
        watcher,
        rollouts: Some(rollouts),
        driver: config.rollouts,
        verdicts,
        reload_interval: config.reload_interval,
        access_log,
        handed,
        draining,
    })
}

/// Completes when `stopped` turns true (or its sender is gone: a start that failed half-way).
fn shutdown_signal(stopped: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stopped = stopped.clone();
    async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }
}

/// What every data plane listener serves with, whichever worker it runs on.
#[derive(Clone)]
struct DataPlane {
    cfg: Arc<ProxyConfig>,
    upstreams: Arc<LiveUpstreams>,
    router: Arc<dyn proxy::Router>,
}

impl DataPlane {
    /// Serves `listener` until `stopped` (see [`proxy::serve_front`]).
    fn serve(
        &self,
        listener: proxy::listen::Listener,
        front: Front,
        stopped: &watch::Receiver<bool>,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        proxy::serve_front(
            listener,
            front,
            self.cfg.clone(),
            self.upstreams.clone(),
            self.router.clone(),
            shutdown_signal(stopped),
        )
    }
}

/// Serves the data plane's sockets until `stopped`: with one worker on this runtime, as before
/// workers existed; with more, on as many worker threads (`proxy::workers`), each serving the
/// sockets [`proxy::workers::spread`] gives it. One task per listener (one alone), or per worker.
fn serve_data_plane(
    groups: Vec<(Group, Front)>,
    workers: usize,
    plane: DataPlane,
    stopped: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<std::io::Result<()>>>, StartError> {
    // Each worker's sockets. A socket that several workers serve is a descriptor of its own in
    // each (every runtime registers the one it was given); the originals close at the end.
    let mut each: Vec<Vec<(std::net::TcpListener, Front)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for (group, front) in groups {
        let spread = proxy::workers::spread(group.sockets.len(), workers);
        for (worker, served) in spread.into_iter().enumerate() {
            for j in served {
                let socket = group.sockets[j]
                    .try_clone()
                    .map_err(|source| StartError::Bind {
                        listener: group.listener,
                        addr: group.addr,
                        source,
                    })?;
                each[worker].push((socket, front.clone()));
            }
        }
    }
    if workers == 1 {
        let mut servers = Vec::new();
        for (socket, front) in each.into_iter().flatten() {
            let listener = proxy::listen::Listener::from_std(socket)
                .map_err(|source| StartError::Worker { index: 0, source })?;
            servers.push(tokio::spawn(plane.serve(listener, front, stopped)));
        }
        return Ok(servers);
    }
    let each = each
        .into_iter()
        .enumerate()
        .map(|(index, sockets)| {
            let plane = plane.clone();
            let stopped = stopped.clone();
            move || serve_worker(index, sockets, plane, stopped)
        })
        .collect();
    proxy::workers::spawn_all(each).map_err(|(index, source)| StartError::Worker { index, source })
}

/// One worker's part of the data plane, run on its own runtime: serves its sockets until
/// `stopped`, and ends with the first error a listener ended with.
async fn serve_worker(
    index: usize,
    sockets: Vec<(std::net::TcpListener, Front)>,
    plane: DataPlane,
    stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut served = Vec::new();
    for (socket, front) in sockets {
        let listener = proxy::listen::Listener::from_std(socket).inspect_err(|e| {
            tracing::error!(worker = index, error = %e, "data plane worker cannot serve its listening socket");
        })?;
        served.push(tokio::spawn(plane.serve(listener, front, &stopped)));
    }
    let mut ended = Ok(());
    for listener in served {
        match listener.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ended = Err(e),
            Err(e) => ended = Err(std::io::Error::other(e)),
        }
    }
    ended
}

/// Every listener of a config, bound (and its bound address), not yet served.
struct Sockets {
    metrics: Option<(proxy::listen::Listener, SocketAddr)>,
    tls: Vec<Group>,
    plain: Vec<Group>,
    admin: Option<(proxy::listen::Listener, SocketAddr)>,
    /// A copy of each, to hand to an upgrade's new process.
    handed: Vec<(String, OwnedFd)>,
}

impl Sockets {
    /// Binds them all (or takes them over from an upgrade's old process), or fails naming the
    /// first that cannot be bound (those bound before it are closed when they are dropped).
    async fn bind(
        config: &Config,
        workers: usize,
        inherited: &Inheritance,
    ) -> Result<Sockets, StartError> {
        let backlog = config.listen_backlog;
        let mut handed = Vec::new();
        let keep = |handed: &mut Vec<(String, OwnedFd)>, bound: Bound| {
            handed.push(bound.handed);
            (bound.listener, bound.addr)
        };
        let metrics = match config.metrics.listen {
            Some(addr) => {
                let bound = bind(Listener::Metrics, addr, backlog, inherited).await?;
                Some(keep(&mut handed, bound))
            }
            None => None,
        };
        let mut tls = Vec::new();
        for addr in config.tls.iter().flat_map(|t| t.listen.iter()) {
            let group = bind_group(
                Listener::Tls,
                *addr,
                backlog,
                workers,
                inherited,
                &mut handed,
            )?;
            tls.push(group);
        }
        let mut plain = Vec::new();
        for addr in &config.listen {
            let listener = Listener::DataPlane;
            let group = bind_group(listener, *addr, backlog, workers, inherited, &mut handed)?;
            plain.push(group);
        }
        let admin = match &config.admin {
            Some(admin) => {
                let bound = bind(Listener::Admin, admin.listen, backlog, inherited).await?;
                Some(keep(&mut handed, bound))
            }
            None => None,
        };
        Ok(Sockets {
            metrics,
            tls,
            plain,
            admin,
            handed,
        })
    }
}

/// The connection limit of each listener group, made from the config once so that the metrics
/// read the same counters the listeners count into.
struct ListenerLimits {
    /// The data plane, plain and TLS listeners together (`max_connections`, or sized for the
    /// open-file limit).
    data: ConnectionLimit,
    /// `[admin] max_connections`.
    admin: ConnectionLimit,
    /// `[metrics] max_connections`.
    metrics: ConnectionLimit,
    /// Whether the config has an admin listener and a metrics listener.
    has_admin: bool,
    has_metrics: bool,
}

impl ListenerLimits {
    /// The limits `config` sets; raises the open-file limit first, since the data plane's
    /// default is sized for it.
    fn of(config: &Config, workers: usize) -> ListenerLimits {
        let admin = config
            .admin
            .as_ref()
            .map_or(DEFAULT_ADMIN_MAX_CONNECTIONS, |a| a.max_connections);
        let has_admin = config.admin.is_some();
        let has_metrics = config.metrics.listen.is_some();
        let others = if has_admin { admin } else { 0 }
            + if has_metrics {
                config.metrics.max_connections
            } else {
                0
            };
        // Raises the open-file limit first: the data plane's limit is sized for it.
        let data = proxy::listen::prepare_fd_limit(config.max_connections, others);
        ListenerLimits {
            data: ConnectionLimit::of_workers("data", data, workers),
            admin: ConnectionLimit::new("admin", admin),
            metrics: ConnectionLimit::new("metrics", config.metrics.max_connections),
            has_admin,
            has_metrics,
        }
    }

    /// The limits of the listeners the config has, for the metrics.
    fn in_use(&self) -> Vec<ConnectionLimit> {
        let mut limits = vec![self.data.clone()];
        if self.has_admin {
            limits.push(self.admin.clone());
        }
        if self.has_metrics {
            limits.push(self.metrics.clone());
        }
        limits
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

/// Reopens the access log file once, logging what came of it.
async fn reopen_logs(reopener: Option<&AccessLogReopener>) {
    let Some(reopener) = reopener else {
        tracing::info!("SIGUSR1: no log file to reopen: the access log is off");
        return;
    };
    match reopener.reopen().await {
        Ok(Reopened::File(path)) => {
            tracing::info!(path = %path.display(), "SIGUSR1: access log reopened")
        }
        Ok(Reopened::Stdout) => {
            tracing::info!("SIGUSR1: no log file to reopen: the access log goes to stdout")
        }
        Err(e) => tracing::error!(
            error = %crate::store::ErrorChain(&e),
            "SIGUSR1: access log not reopened"
        ),
    }
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
    limits: &ListenerLimits,
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
            listeners: limits.in_use(),
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

    fn fleet(&self) -> crate::observe::FleetStats {
        crate::observe::FleetStats {
            diverged: self.divergence().map(|d| d.revision),
            store_behind: matches!(
                self.store_seen().0,
                crate::gateway::StoreSeen::Behind { .. }
            ),
            restores: self.restores(),
        }
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
        let health = self.0.health();
        StoreStats {
            store: self.0.kind(),
            lookups: cache.map(|s| s.fetches),
            errors: cache.map(|s| s.errors),
            cache: cache.map(|s| CacheCounts {
                hits: s.hits,
                misses: s.misses,
                entries: s.entries,
                bytes: s.bytes,
                shed: s.shed,
                keys_too_long: s.keys_too_long,
            }),
            unusable_keys: self.0.unusable_keys(),
            degraded: health.degraded,
            invalidation: health.invalidation,
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
    /// What reopens the access log file (log rotation); `None` when the access log is off.
    pub fn access_log_reopener(&self) -> Option<AccessLogReopener> {
        self.access_log.as_ref().map(AccessLogWriter::reopener)
    }

    /// Reopens the log files graygate writes on every SIGUSR1, for logrotate: the access log
    /// file (the process log goes to stderr, which graygate does not open). Each SIGUSR1 is
    /// logged once with what it did; a file that cannot be reopened is logged as an error and
    /// written to as before. The handler is in place when this returns, so a SIGUSR1 sent after
    /// it never meets the default action (the end of the process).
    pub fn reopen_logs_on_sigusr1(&self) -> std::io::Result<JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let reopener = self.access_log_reopener();
        Ok(tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                reopen_logs(reopener.as_ref()).await;
            }
        }))
    }

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
        self.heartbeat.abort();
        self.gateway.leave_fleet().await;
        if let Some(cert_watcher) = self.cert_watcher {
            cert_watcher.abort();
        }
        if let Some(rollouts) = self.rollouts {
            rollouts.stop().await;
        }
        if let Some(access_log) = self.access_log {
            access_log.finish().await;
        }
    }
}

impl Running {
    /// Starts a new graygate process (`exe` with `args`: this binary's path, so a newly installed
    /// one, and this process's arguments) and hands it the listening sockets and the store, as
    /// [`crate::upgrade`] describes. `Ok`: the new process serves; [`Running::hand_over`] then
    /// stops this one. `Err`: the new process failed or was too slow and was killed, and this one
    /// goes on serving as before, its store taken back.
    pub async fn upgrade(
        &mut self,
        exe: &Path,
        args: &[OsString],
    ) -> Result<Successor, UpgradeError> {
        let fds: Vec<_> = self
            .handed
            .iter()
            .map(|(key, fd)| (key.clone(), fd.as_raw_fd()))
            .collect();
        let mut successor = Successor::spawn(exe, args, &fds)?;
        tracing::info!(
            pid = successor.pid().unwrap_or_default(),
            "upgrade: started {}; it reads the config and checks its upstreams before it takes over",
            exe.display()
        );
        if let Err(e) = successor.expect(Said::Release, "getting ready").await {
            successor.abandon().await;
            return Err(e);
        }
        // From here until it is taken back, the store is the new process's: no change here.
        self.gateway.set_handing_over(true);
        if let Some(rollouts) = self.rollouts.take() {
            rollouts.stop().await;
        }
        self.watcher.abort();
        let handed = async {
            self.gateway
                .store()
                .hand_over()
                .await
                .map_err(|e| UpgradeError::Predecessor(e.chain().to_string()))?;
            successor.released().await?;
            successor.expect(Said::Ready, "starting").await
        }
        .await;
        match handed {
            Ok(()) => Ok(successor),
            Err(e) => {
                successor.abandon().await;
                if let Err(taken) = self.gateway.store().take_back().await {
                    tracing::error!(
                        error = %taken.chain(),
                        "upgrade: the store cannot be taken back: changes are refused until a restart"
                    );
                }
                self.watcher = self.gateway.spawn_watcher(self.reload_interval);
                self.rollouts = Some(
                    self.gateway
                        .spawn_rollouts_counting(self.driver, self.verdicts.clone()),
                );
                self.gateway.set_handing_over(false);
                Err(e)
            }
        }
    }

    /// After a successful [`Running::upgrade`]: tells the service manager that the new process is
    /// the service's main one, stops accepting (the new process accepts from the same sockets),
    /// closes HTTP/1.1 keep-alive connections after their next answer, lets the requests in
    /// flight finish within `[timeouts] shutdown`, and returns.
    pub async fn hand_over(self, successor: Successor) {
        if let Some(pid) = successor.pid() {
            upgrade::notify_service_manager(upgrade::ServiceState::HandedOver(pid));
        }
        successor.detach();
        self.draining.start();
        self.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_the_configured_workers_and_must_be_a_count() {
        assert_eq!(workers_from(None, Some(2)).unwrap(), 2);
        assert_eq!(workers_from(Some(" 3 ".into()), Some(2)).unwrap(), 3);
        assert!(workers_from(None, None).unwrap() >= 1, "one per core");
        for bad in ["two", "0", "-1", ""] {
            let e = workers_from(Some(bad.into()), Some(1)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("GRAYGATE_WORKERS must be a whole number of at least 1, not `{bad}`")
            );
        }
    }
}
