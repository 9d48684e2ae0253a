//! Assembles a running graygate from a validated [`Config`]: opens the store, loads the policy,
//! builds the upstream pools, binds every listener and serves until told to stop.
//!
//! `graygate run` and `graygate demo` both start through here, so the demo exercises the same
//! path an operator runs in production.

use crate::config::{Config, StoreConfig};
use crate::gateway::{Gateway, GatewayError};
use crate::proxy::{self, ProxyConfig, UpstreamConfigError, Upstreams};
use crate::store::{CachedStore, EmbeddedStore, MemcachedStore, RedisStore, Store, StoreError};
use http::HeaderName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why graygate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] GatewayError),
    #[error("upstreams: {0}")]
    Upstreams(#[from] UpstreamConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started graygate: its bound addresses and the handles to stop it.
pub struct Running {
    /// The addresses actually bound (port 0 in the config becomes the port the OS chose).
    pub addrs: Vec<SocketAddr>,
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    watcher: JoinHandle<()>,
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
pub async fn start(config: &Config, store: Arc<dyn Store>) -> Result<Running, StartError> {
    let upstream_names: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
    let seed = config.policy.as_ref().map(|p| &p.doc);
    // A little above the cache's own bound, so that the cache (which can serve a stale value)
    // answers first.
    let lookup_timeout = config.cache.lookup_timeout + std::time::Duration::from_millis(10);
    let gateway = Gateway::start(store, upstream_names, seed, lookup_timeout).await?;
    let watcher = gateway.spawn_watcher(config.reload_interval);

    let upstreams = Arc::new(Upstreams::new(config.upstreams.clone(), &config.timeouts)?);
    let proxy_config = Arc::new(ProxyConfig {
        listen: config.listen[0],
        timeouts: config.timeouts,
        max_header_bytes: config.max_header_bytes,
        client_ip: config.client_ip.clone(),
        version_header: config
            .version_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        response_version_header: None,
        observer: None,
    });
    let (stop, stopped) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for addr in &config.listen {
        let listener = proxy::bind(*addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?;
        addrs.push(bound);
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let router: Arc<dyn proxy::Router> = gateway.clone();
        servers.push(tokio::spawn(proxy::serve(
            listener,
            proxy_config.clone(),
            upstreams.clone(),
            router,
            shutdown,
        )));
    }
    Ok(Running {
        addrs,
        gateway,
        stop,
        servers,
        watcher,
    })
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
    }
}
