//! The startup config: one TOML file, validated into the types the rest of graygate runs on.
//!
//! Like `nginx -t`, `graygate check` runs exactly this code, so what it accepts is what `run`
//! starts with. Every error names the file, the line and the field: syntax errors and unknown keys
//! come from the TOML parser with their position; errors found after parsing (an address that does
//! not parse, a policy that references an unknown upstream) carry a field path that `locate`
//! turns back into a line.
//!
//! Relative paths in the file (`policy_file`, `store.path`, an upstream's `ca`, `client_cert` and
//! `client_key`) are relative to the file's directory.

mod admin;
pub mod file;
#[cfg(test)]
mod generated;
mod health;
mod http2;
pub(crate) mod locate;
mod observe;
mod tls;
mod upstream;

pub use crate::proxy::listen::{
    DEFAULT_LISTEN_BACKLOG, DEFAULT_MAX_CONNECTIONS, MAX_CONNECTIONS_LIMIT, MAX_LISTEN_BACKLOG,
};
pub use crate::proxy::{DEFAULT_MAX_HEADER_BYTES, DEFAULT_VERSION_HEADER};
pub use admin::{
    AdminConfig, AdminToken, DEFAULT_ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_LISTEN,
    DEFAULT_SESSION_TTL, MIN_TOKEN_LEN,
};
pub use observe::{AccessLogConfig, LogConfig, LogFormat, MetricsConfig};
pub use tls::{TlsConfig, DEFAULT_WATCH_INTERVAL};
pub use upstream::{shared_upstream, SharedUpstreamError};

use crate::policy::{self, PolicyDoc};
use crate::proxy::{self, ClientIpConfig, ClientIpMode, Http2Settings, Timeouts, UpstreamConfig};
use crate::store::{CacheConfig, KeyEscape, MemcachedConfig, RedisConfig};
use file::{ConfigFile, StoreFile};
use http::HeaderName;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config that cannot be used, and where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// `file:line:column: field: message`.
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    /// Several problems found together (each `[admin]` token variable that is not set), one
    /// [`ConfigError::Invalid`] per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The field path the error is about (`upstreams[0].servers[1]`), empty for read errors.
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Read { .. } => "",
            ConfigError::Several(errors) => errors.first().map_or("", ConfigError::field),
        }
    }

    /// Each problem on its own: the one itself, or every one of [`ConfigError::Several`].
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(errors) => errors.iter().flat_map(ConfigError::each).collect(),
            one => vec![one],
        }
    }
}

/// The validated startup config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; `policy_file` and store paths are resolved against its directory.
    pub file: PathBuf,
    /// Addresses the plain data plane listens on (may be empty when `tls` has listeners).
    pub listen: Vec<SocketAddr>,
    pub store: StoreConfig,
    /// The lookup cache in front of a shared store (Redis, memcached).
    pub cache: CacheConfig,
    pub client_ip: ClientIpConfig,
    pub timeouts: Timeouts,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Listen backlog of every listener: connections the kernel completes and holds until
    /// graygate accepts them, so that a burst of new clients (or a listener at its connection
    /// limit) makes them wait rather than time out. Default 511, as nginx.
    pub listen_backlog: u32,
    /// Client connections of the data plane open at once, plain and TLS listeners together:
    /// what bounds the file descriptors clients can take. `None` (not set): sized at start for
    /// the open-file limit, at most 10,000 (see `crate::proxy::listen::data_plane_limit`).
    pub max_connections: Option<usize>,
    pub upstreams: Vec<UpstreamConfig>,
    /// The policy written in the config (inline `[policy]` or `policy_file`), already validated
    /// against the upstreams. It seeds a store that holds no policy yet; a reload (SIGHUP)
    /// applies it again only when it changed since it was last applied (see `crate::reload`).
    pub policy: Option<PolicySource>,
    /// How often the full policy is reloaded from the store, as a safety net for a missed change
    /// notification.
    pub reload_interval: Duration,
    /// Request header naming the chosen version, sent to the upstream (`None`: not sent).
    /// Validated here, once: the data plane takes it as it is.
    pub version_header: Option<HeaderName>,
    /// Worker threads of the data plane (`None`: one per core). Benchmarks against one nginx
    /// worker set 1, so that both sides use one core.
    pub workers: Option<usize>,
    /// The Prometheus metrics listener (`[metrics]`).
    pub metrics: MetricsConfig,
    /// The access log (`[access_log]`).
    pub access_log: AccessLogConfig,
    /// The process log (`[log]`): how graygate's own messages are written to stderr.
    pub log: LogConfig,
    /// Also name the version that answered in a response header to the client (the
    /// `version_header` name), so that testers see which version they reached. Default off.
    pub response_version_header: bool,
    /// The admin API (`[admin]`); `None`: no admin listener.
    pub admin: Option<AdminConfig>,
    /// The rollout driver (`[rollouts]`).
    pub rollouts: crate::gateway::DriverConfig,
    /// TLS listeners and certificates (`[tls]`); `None`: no TLS listener.
    pub tls: Option<TlsConfig>,
    /// Limits of HTTP/2 client connections (`[http2]`).
    pub http2: Http2Settings,
    /// How much policy history the store keeps (`[history]`).
    pub history: crate::store::HistoryRetention,
    /// The snapshot, what to do with a store behind, the heartbeat (`[fleet]`).
    pub fleet: crate::gateway::FleetOptions,
}

/// Where the policy and the identity lists are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// redb in this directory (created if missing).
    Embedded { dir: PathBuf },
    /// Policy and lists in Redis, shared by every instance pointed at it.
    Redis(RedisConfig),
    /// Lists in memcached (the original IP gray-list layout); the policy in an embedded store in
    /// `dir`, since memcached can neither keep a document safely nor notify.
    Memcached {
        memcached: MemcachedConfig,
        dir: PathBuf,
    },
}

/// A policy read from the config, with where it came from.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub doc: PolicyDoc,
    /// The file it was read from (the config itself for an inline policy).
    pub file: PathBuf,
}

impl Config {
    /// What is valid but probably not meant, for `graygate check`: a tester override that any
    /// client can use (no `from`, `secret` or `key`) while a listener is reachable beyond
    /// loopback.
    pub fn warnings(&self) -> Vec<String> {
        let mut open: Vec<SocketAddr> = self.listen.clone();
        if let Some(tls) = &self.tls {
            open.extend(tls.listen.iter().copied());
        }
        open.retain(|a| !a.ip().is_loopback());
        let (Some(policy), Some(first)) = (&self.policy, open.first()) else {
            return Vec::new();
        };
        policy
            .doc
            .services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let o = s.override_.as_ref()?;
                if !o.from.is_empty() || o.secret.is_some() || o.key.is_some() {
                    return None;
                }
                Some(format!(
                    "{}: services[{i}].override: any client of {first} can send `always` and reach version {} of {}; limit it with `from` (networks), `secret` or `key`",
                    policy.file.display(),
                    o.version,
                    s.name
                ))
            })
            .collect()
    }
}

/// Default of `reload_interval`: how often the full policy is reloaded from the store.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The longest duration any setting accepts: 365 days. Timers are deadlines (`Instant + d`),
/// which overflow (and panic, on every request) for durations of billions of years that
/// `humantime` reads without complaint; no timeout or interval is meant to be longer than this.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The largest `max_header_bytes` accepted: 1 MiB. Every connection may buffer that much of a
/// request head before refusing it (hyper's read buffer is sized from it), so a larger bound only
/// lets a few clients hold a lot of memory; real request heads are a few KiB.
pub const MAX_HEADER_BYTES_LIMIT: usize = 1024 * 1024;

/// The smallest `cache.max_bytes` accepted: 1 KiB, a few entries. Below it nothing is cached.
pub const MIN_CACHE_BYTES: u64 = 1024;

/// The largest `cache.max_key_bytes` accepted: 64 KiB. Longer than any identity; a larger bound
/// would only let a request make the store and the cache hold megabyte keys.
pub const MAX_LOOKUP_KEY_BYTES: usize = 64 * 1024;

/// The largest `cache.max_in_flight` accepted: more lookups at once than any store serves, and
/// each may hold a connection to it.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    parse(&text, path)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// [`load`] for a command that does not serve the admin API (`graygate import`): the `[admin]`
/// tokens named by `token_env` are not read, so their variables need not be set, and are left out
/// of [`AdminConfig::tokens`]. Everything else is validated as [`load`] does.
pub fn load_without_admin_secrets(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    parse_with(&text, path, AdminSecrets::Skip)
}

/// Whether the `[admin]` tokens named by `token_env` are read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminSecrets {
    /// Read them; each variable that is not set is an error of the config (`run`, `check`).
    Read,
    /// Leave them out: for commands that never serve the admin API.
    Skip,
}

/// Validates config text; `path` names it in errors and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, AdminSecrets::Read)
}

/// [`parse`], reading the admin tokens' environment variables or not.
pub fn parse_with(text: &str, path: &Path, secrets: AdminSecrets) -> Result<Config, ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
    let at = |field: &str, message: String| invalid(text, path, field, message);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    let tls_listens = file.tls.as_ref().is_some_and(|t| !t.listen.is_empty());
    if file.listen.is_empty() && !tls_listens {
        return Err(at(
            "listen",
            "needs at least one address, like \"127.0.0.1:8080\" (or `[tls] listen`)".into(),
        ));
    }
    let mut listen = Vec::new();
    for (i, addr) in file.listen.iter().enumerate() {
        listen.push(address(&format!("listen[{i}]"), addr, 8080, &at)?);
    }

    let store = store_config(&file.store, &base, &at)?;

    let mut trusted = Vec::new();
    for (i, net) in file.client_ip.trusted_proxies.iter().enumerate() {
        let parsed = policy::IpTable::parse_net(net)
            .map_err(|e| at(&format!("client_ip.trusted_proxies[{i}]"), e))?;
        trusted.push(parsed);
    }
    let mode = match file.client_ip.mode.as_deref().unwrap_or("forwarded") {
        "forwarded" => ClientIpMode::Forwarded,
        "original" => ClientIpMode::Original,
        other => {
            return Err(at(
                "client_ip.mode",
                format!("unknown mode `{other}` (known: forwarded, original)"),
            ))
        }
    };
    let client_ip = ClientIpConfig {
        trusted_proxies: trusted,
        mode,
        strip_untrusted_forwarded: file
            .client_ip
            .strip_untrusted_forwarded
            .unwrap_or(ClientIpConfig::default().strip_untrusted_forwarded),
    };

    let defaults = Timeouts::default();
    let duration = |field: &str, value: &Option<String>, default: Duration| {
        duration(field, value, default, &at)
    };
    let t = &file.timeouts;
    let timeouts = Timeouts {
        connect: duration("timeouts.connect", &t.connect, defaults.connect)?,
        header: duration("timeouts.header", &t.header, defaults.header)?,
        upstream_response: duration(
            "timeouts.upstream_response",
            &t.upstream_response,
            defaults.upstream_response,
        )?,
        idle: duration("timeouts.idle", &t.idle, defaults.idle)?,
        client_body: duration("timeouts.client_body", &t.client_body, defaults.client_body)?,
        upstream_body: duration(
            "timeouts.upstream_body",
            &t.upstream_body,
            defaults.upstream_body,
        )?,
        shutdown: duration("timeouts.shutdown", &t.shutdown, defaults.shutdown)?,
    };
    let reload_interval = duration(
        "reload_interval",
        &file.reload_interval,
        DEFAULT_RELOAD_INTERVAL,
    )?;
    let cache_defaults = CacheConfig::default();
    let c = &file.cache;
    let cache = CacheConfig {
        max_entries: match c.max_entries {
            Some(0) => return Err(at("cache.max_entries", "must be at least 1".into())),
            Some(n) => n,
            None => cache_defaults.max_entries,
        },
        max_bytes: match c.max_bytes {
            Some(n) if n < MIN_CACHE_BYTES => {
                return Err(at(
                    "cache.max_bytes",
                    format!("{n} is too small (at least {MIN_CACHE_BYTES}, 1 KiB)"),
                ))
            }
            Some(n) => n,
            None => cache_defaults.max_bytes,
        },
        max_key_bytes: match c.max_key_bytes {
            Some(n) if !(1..=MAX_LOOKUP_KEY_BYTES).contains(&n) => {
                return Err(at(
                    "cache.max_key_bytes",
                    format!("{n} is out of range (1 to {MAX_LOOKUP_KEY_BYTES}, 64 KiB)"),
                ))
            }
            Some(n) => n,
            None => cache_defaults.max_key_bytes,
        },
        max_in_flight: match c.max_in_flight {
            Some(n) if !(1..=MAX_IN_FLIGHT).contains(&n) => {
                return Err(at(
                    "cache.max_in_flight",
                    format!("{n} is out of range (1 to {MAX_IN_FLIGHT})"),
                ))
            }
            Some(n) => n,
            None => cache_defaults.max_in_flight,
        },
        ttl: duration("cache.ttl", &c.ttl, cache_defaults.ttl)?,
        negative_ttl: duration(
            "cache.negative_ttl",
            &c.negative_ttl,
            cache_defaults.negative_ttl,
        )?,
        lookup_timeout: duration(
            "cache.lookup_timeout",
            &c.lookup_timeout,
            cache_defaults.lookup_timeout,
        )?,
    };

    let max_header_bytes = file.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if max_header_bytes < 1024 {
        return Err(at(
            "max_header_bytes",
            format!("{max_header_bytes} is too small (at least 1024)"),
        ));
    }
    if max_header_bytes > MAX_HEADER_BYTES_LIMIT {
        return Err(at(
            "max_header_bytes",
            format!(
                "{max_header_bytes} is too large (at most {MAX_HEADER_BYTES_LIMIT}, 1 MiB): every connection may buffer that much before its request is refused"
            ),
        ));
    }

    let listen_backlog = file.listen_backlog.unwrap_or(DEFAULT_LISTEN_BACKLOG);
    if listen_backlog == 0 {
        return Err(at("listen_backlog", "must be at least 1".into()));
    }
    if listen_backlog > MAX_LISTEN_BACKLOG {
        return Err(at(
            "listen_backlog",
            format!(
                "{listen_backlog} is too large (at most {MAX_LISTEN_BACKLOG}; the kernel caps it at net.core.somaxconn anyway)"
            ),
        ));
    }
    let max_connections = file
        .max_connections
        .map(|n| connection_limit("max_connections", Some(n), n, &at))
        .transpose()?;

    let mut upstreams = Vec::new();
    for (i, u) in file.upstreams.iter().enumerate() {
        upstreams.push(upstream::upstream_config(
            &format!("upstreams[{i}]"),
            u,
            &base,
            &at,
        )?);
    }
    // The data plane's own rules (names, servers), reported at the line of the field.
    proxy::check_upstreams(&upstreams).map_err(|e| at(&e.field(), e.to_string()))?;
    let upstream_names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();

    let policy = match (&file.policy, &file.policy_file) {
        (Some(_), Some(_)) => {
            return Err(at(
                "policy_file",
                "give the policy inline (`[policy]`) or in `policy_file`, not both".into(),
            ))
        }
        (Some(doc), None) => {
            let names = policy_upstreams(doc, &upstream_names, &base)
                .map_err(|e| at(&format!("policy.{}", e.field), e.message))?;
            policy::compile(doc, &names)
                .map_err(|e| at(&format!("policy.{}", e.path), e.message))?;
            Some(PolicySource {
                doc: doc.clone(),
                file: path.to_path_buf(),
            })
        }
        (None, Some(p)) => {
            let policy_path = base.join(p);
            Some(load_policy_file(&policy_path, &upstream_names)?)
        }
        (None, None) => None,
    };

    let version_header = match file.version_header.as_deref() {
        Some("") => None,
        Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            at(
                "version_header",
                format!("`{h}` is not a valid header name"),
            )
        })?),
        None => Some(DEFAULT_VERSION_HEADER),
    };

    if file.workers == Some(0) {
        return Err(at(
            "workers",
            "must be at least 1 (leave it out for one per core)".into(),
        ));
    }

    let tls = file
        .tls
        .as_ref()
        .map(|t| tls::tls_config(t, &listen, &base, &at, &duration))
        .transpose()?;
    let http2 = http2::http2_config(&file.http2, &at)?;
    // The admin and metrics listeners must not take a traffic listener's address, TLS or not.
    let traffic: Vec<SocketAddr> = listen
        .iter()
        .chain(tls.iter().flat_map(|t| t.listen.iter()))
        .copied()
        .collect();

    let (metrics, access_log) =
        observe::observe_config(&file.metrics, &file.access_log, &traffic, &base, &at)?;
    let log = observe::log_config(&file.log, &at)?;

    let admin = file
        .admin
        .as_ref()
        .map(|a| admin::admin_config(a, &traffic, secrets, &at))
        .transpose()?;
    distinct_listeners(&file, &listen, tls.as_ref(), &metrics, admin.as_ref(), &at)?;

    let driver = crate::gateway::DriverConfig::default();
    let rollouts = crate::gateway::DriverConfig {
        tick: duration("rollouts.tick", &file.rollouts.tick, driver.tick)?,
        lease: duration("rollouts.lease", &file.rollouts.lease, driver.lease)?,
    };
    if rollouts.lease < rollouts.tick * 2 {
        return Err(at(
            "rollouts.lease",
            format!(
                "must be at least twice the tick ({}), so that the driver renews it in time",
                humantime::format_duration(rollouts.tick)
            ),
        ));
    }

    let history = history_retention(&file.history, &at)?;
    let state_dir = match &store {
        StoreConfig::Embedded { dir } | StoreConfig::Memcached { dir, .. } => Some(dir.as_path()),
        StoreConfig::Redis(_) => None,
    };
    let fleet = fleet_options(&file.fleet, &base, path, state_dir, &at, &duration)?;

    Ok(Config {
        fleet,
        history,
        tls,
        http2,
        rollouts,
        admin,
        metrics,
        access_log,
        log,
        response_version_header: file.response_version_header,
        workers: file.workers,
        file: path.to_path_buf(),
        listen,
        store,
        cache,
        client_ip,
        timeouts,
        max_header_bytes,
        listen_backlog,
        max_connections,
        upstreams,
        policy,
        reload_interval,
        version_header,
    })
}

/// The `[store]` table: which keys go with which kind, and what they default to.
fn store_config(
    f: &StoreFile,
    base: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<StoreConfig, ConfigError> {
    let kind = f.kind.as_deref().unwrap_or("embedded");
    let only = |field: &str, given: bool, kinds: &str| -> Result<(), ConfigError> {
        if given {
            Err(at(
                &format!("store.{field}"),
                format!("`{field}` is not a setting of the {kind} store (only of: {kinds})"),
            ))
        } else {
            Ok(())
        }
    };
    let dir = base.join(f.path.as_deref().unwrap_or("graygate-data"));
    match kind {
        "embedded" => {
            only("url", f.url.is_some(), "redis")?;
            only("key_escape", f.key_escape.is_some(), "memcached")?;
            only("key_prefix", f.key_prefix.is_some(), "redis")?;
            only("servers", f.servers.is_some(), "memcached")?;
            only("lists", f.lists.is_some(), "redis, memcached")?;
            Ok(StoreConfig::Embedded { dir })
        }
        "redis" => {
            only("path", f.path.is_some(), "embedded, memcached")?;
            only("key_escape", f.key_escape.is_some(), "memcached")?;
            only("servers", f.servers.is_some(), "memcached")?;
            let Some(url) = &f.url else {
                return Err(at(
                    "store",
                    "the redis store needs `url`, like \"redis://127.0.0.1:6379/0\"".into(),
                ));
            };
            // Sentinel and Cluster URL forms too; a cluster's default prefix carries a hash tag.
            let mut config = RedisConfig::new(url.clone());
            if let Some(p) = &f.key_prefix {
                config.key_prefix = p.clone();
            }
            config.lists = f.lists.clone().unwrap_or_default();
            if let Err(problem) = config.check() {
                return Err(at(&format!("store.{}", problem.field), problem.detail));
            }
            Ok(StoreConfig::Redis(config))
        }
        "memcached" => {
            only("url", f.url.is_some(), "redis")?;
            only("key_prefix", f.key_prefix.is_some(), "redis")?;
            let servers = f.servers.clone().unwrap_or_default();
            if servers.is_empty() {
                return Err(at(
                    "store",
                    "the memcached store needs `servers`, like [\"127.0.0.1:11211\"]".into(),
                ));
            }
            for (i, s) in servers.iter().enumerate() {
                // The same `host:port` rule as upstream servers, without their options.
                if proxy::check_host_port(s).is_err() {
                    return Err(at(
                        &format!("store.servers[{i}]"),
                        format!("`{s}` is not host:port"),
                    ));
                }
            }
            let mut key_escape = std::collections::HashMap::new();
            // In name order, so that the first mistake reported is always the same one.
            let given: std::collections::BTreeMap<_, _> = f.key_escape.iter().flatten().collect();
            for (list, name) in given {
                let Some(escape) = KeyEscape::from_name(name) else {
                    let known: Vec<&str> = KeyEscape::ALL.iter().map(|(n, _)| *n).collect();
                    return Err(at(
                        &format!("store.key_escape.{list}"),
                        format!(
                            "`{name}` is not a key escape (known: {}; `uri` escapes keys as the original's memcached client does)",
                            known.join(", ")
                        ),
                    ));
                };
                key_escape.insert(list.clone(), escape);
            }
            let memcached = MemcachedConfig {
                servers,
                lists: f.lists.clone().unwrap_or_default(),
                key_escape,
            };
            Ok(StoreConfig::Memcached { memcached, dir })
        }
        other => Err(at(
            "store.kind",
            format!("unknown store `{other}` (known: embedded, redis, memcached)"),
        )),
    }
}

/// Reads a policy file (TOML with top-level `routes` and `services`) and validates it against the
/// upstream names.
pub fn load_policy_file(path: &Path, upstreams: &[&str]) -> Result<PolicySource, ConfigError> {
    let text = read(path)?;
    parse_policy(&text, path, upstreams)
}

/// The upstream names a policy compiles against: the config file's and the policy's own
/// (`upstreams`, each checked as this instance would build it, relative paths from `base`).
fn policy_upstreams<'a>(
    doc: &'a PolicyDoc,
    file: &[&'a str],
    base: &Path,
) -> Result<Vec<&'a str>, SharedUpstreamError> {
    let mut names = file.to_vec();
    for (name, upstream) in &doc.upstreams {
        shared_upstream(name, upstream, base)?;
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// [`load_policy_file`] of text already read from `path`.
pub fn parse_policy(
    text: &str,
    path: &Path,
    upstreams: &[&str],
) -> Result<PolicySource, ConfigError> {
    let doc: PolicyDoc = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let names = policy_upstreams(&doc, upstreams, &base)
        .map_err(|e| invalid(text, path, &e.field.to_string(), e.message))?;
    policy::compile(&doc, &names)
        .map_err(|e| invalid(text, path, &e.path.to_string(), e.message))?;
    Ok(PolicySource {
        doc,
        file: path.to_path_buf(),
    })
}

fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start);
    let (line, column) = locate::line_col(text, offset);
    let field = field_at(text, offset);
    ConfigError::Invalid {
        file: path.display().to_string(),
        line,
        column,
        field,
        message: match e.message().trim() {
            // The parser names nothing for some bytes (a carriage return without its line
            // feed, which it reports at the byte after it): say what it stopped at.
            "" => {
                let here = text.get(offset..).and_then(|rest| rest.chars().next());
                let before = text.get(..offset).and_then(|b| b.chars().next_back());
                match (before, here) {
                    (Some('\r'), _) | (_, Some('\r')) => {
                        "invalid TOML: a carriage return (\\r) must be followed by a line feed (\\n)"
                            .to_string()
                    }
                    (_, Some(c)) => format!("invalid TOML: unexpected {c:?}"),
                    (_, None) => "invalid TOML: unexpected end of the file".to_string(),
                }
            }
            message => message.to_string(),
        },
    }
}

/// The key written at or before a byte offset (best effort, for syntax errors that name no field).
fn field_at(text: &str, offset: usize) -> String {
    let end = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(text.len().min(offset), |i| {
            // include the line the offset is on
            text[i + 1..].find('\n').map_or(text.len(), |j| i + 1 + j)
        });
    for line in text[..end].lines().rev() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            return header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
        }
        if let Some((key, _)) = line.split_once('=') {
            return key.trim().to_string();
        }
    }
    String::new()
}

/// The default snapshot file's name after the config file's (`graygate.toml`:
/// `graygate.snapshot.json`): in the store's data directory, or beside the config when the store
/// has none (Redis).
pub const DEFAULT_SNAPSHOT_SUFFIX: &str = ".snapshot.json";

/// How the parser reads a duration field: name, value as written, default.
type ReadDuration<'a> =
    &'a dyn Fn(&str, &Option<String>, Duration) -> Result<Duration, ConfigError>;

/// The `[fleet]` table.
fn fleet_options(
    f: &file::FleetFile,
    base: &Path,
    config_path: &Path,
    state_dir: Option<&Path>,
    at: &dyn Fn(&str, String) -> ConfigError,
    duration: ReadDuration<'_>,
) -> Result<crate::gateway::FleetOptions, ConfigError> {
    use crate::gateway::{FleetOptions, OnStoreBehind, DEFAULT_HEARTBEAT};
    let snapshot = match f.snapshot.as_deref() {
        Some("") => None,
        Some(p) => Some(base.join(p)),
        // In the store's data directory when it has one (writable by graygate, as a config
        // directory under systemd or a Kubernetes ConfigMap is not), else beside the config.
        // Named after the config file, so that instances with a config each on one machine
        // keep a snapshot each.
        None => {
            let stem = config_path
                .file_stem()
                .map_or_else(|| "graygate".into(), |s| s.to_string_lossy());
            Some(
                state_dir
                    .unwrap_or(base)
                    .join(format!("{stem}{DEFAULT_SNAPSHOT_SUFFIX}")),
            )
        }
    };
    let on_store_behind = match f.on_store_behind.as_deref() {
        None | Some("reseed") => OnStoreBehind::Reseed,
        Some("refuse") => OnStoreBehind::Refuse,
        Some(other) => {
            return Err(at(
                "fleet.on_store_behind",
                format!("`{other}` is not one of \"reseed\", \"refuse\""),
            ))
        }
    };
    let heartbeat = duration("fleet.heartbeat", &f.heartbeat, DEFAULT_HEARTBEAT)?;
    Ok(FleetOptions {
        snapshot,
        on_store_behind,
        heartbeat,
    })
}

/// The largest `[history] keep`: every record is read by a walk back to the oldest one.
pub const HISTORY_KEEP_LIMIT: usize = 100_000;

/// The smallest `[history] max_bytes`: 64 KiB, a few dozen records of a small policy.
pub const HISTORY_MIN_BYTES: u64 = 64 << 10;

/// The largest `[history] max_bytes`: 4 GiB.
pub const HISTORY_MAX_BYTES: u64 = 4 << 30;

/// The `[history]` table.
fn history_retention(
    f: &file::HistoryFile,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::store::HistoryRetention, ConfigError> {
    let defaults = crate::store::HistoryRetention::default();
    let keep = match f.keep {
        None => defaults.keep,
        Some(0) => return Err(at("history.keep", "must be at least 1".into())),
        Some(n) if n > HISTORY_KEEP_LIMIT => {
            return Err(at(
                "history.keep",
                format!("{n} is too many (at most {HISTORY_KEEP_LIMIT})"),
            ))
        }
        Some(n) => n,
    };
    let max_bytes = match &f.max_bytes {
        None => defaults.max_bytes,
        Some(text) => {
            let size: bytesize::ByteSize = text.trim().parse().map_err(|_| {
                at(
                    "history.max_bytes",
                    format!("`{text}` is not a size like \"64MiB\" or \"500kB\""),
                )
            })?;
            let bytes = size.as_u64();
            if !(HISTORY_MIN_BYTES..=HISTORY_MAX_BYTES).contains(&bytes) {
                return Err(at(
                    "history.max_bytes",
                    format!("`{text}` is out of range (64KiB to 4GiB)"),
                ));
            }
            bytes
        }
    };
    Ok(crate::store::HistoryRetention { keep, max_bytes })
}

/// A duration as written (`"2s"`, `"300ms"`): longer than zero and at most [`MAX_DURATION`];
/// `default` when absent. Every duration of the file is read through here.
/// A listener's connection limit (`field`), or `default` when it is not set: at least 1, at most
/// [`MAX_CONNECTIONS_LIMIT`].
pub(super) fn connection_limit(
    field: &str,
    value: Option<usize>,
    default: usize,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(at(
            field,
            "must be at least 1 (it is how many connections are served at once)".into(),
        )),
        Some(n) if n > MAX_CONNECTIONS_LIMIT => Err(at(
            field,
            format!(
                "{n} is too large (at most {MAX_CONNECTIONS_LIMIT}): every connection takes a file descriptor, and each may need one to its upstream"
            ),
        )),
        Some(n) => Ok(n),
    }
}

pub(super) fn duration(
    field: &str,
    value: &Option<String>,
    default: Duration,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => Err(at(field, "must be longer than zero".into())),
            Ok(d) if d > MAX_DURATION => Err(at(
                field,
                format!("`{v}` is longer than 365 days, the longest duration accepted"),
            )),
            Ok(d) => Ok(d),
            Err(e) => Err(at(
                field,
                format!("`{v}` is not a duration like \"2s\" or \"300ms\": {e}"),
            )),
        },
    }
}

/// Whether two listener addresses cannot both be bound: the same address and port, or (on
/// Linux) the same port where one is the wildcard of the other's family (`0.0.0.0:80` takes
/// port 80 on every IPv4 address). Port 0 picks a free port, so it never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// Every listener (plain, TLS, metrics, admin) needs an address of its own: `run` could not bind
/// the second of two that clash. Reported at the later one, naming the earlier.
fn distinct_listeners(
    file: &ConfigFile,
    listen: &[SocketAddr],
    tls: Option<&TlsConfig>,
    metrics: &MetricsConfig,
    admin: Option<&AdminConfig>,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let mut all: Vec<(String, SocketAddr)> = Vec::new();
    all.extend(
        listen
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("listen[{i}]"), *a)),
    );
    all.extend(
        tls.iter()
            .flat_map(|t| t.listen.iter().enumerate())
            .map(|(i, a)| (format!("tls.listen[{i}]"), *a)),
    );
    all.extend(metrics.listen.map(|a| ("metrics.listen".to_string(), a)));
    // The admin table without `listen` takes the default address: named by its table then.
    let admin_field = match file.admin.as_ref().and_then(|a| a.listen.as_ref()) {
        Some(_) => "admin.listen",
        None => "admin",
    };
    all.extend(admin.map(|a| (admin_field.to_string(), a.listen)));
    for (j, (field, addr)) in all.iter().enumerate() {
        if let Some((first, other)) = all[..j].iter().find(|(_, other)| clash(*other, *addr)) {
            let same = if other == addr {
                "is also".to_string()
            } else {
                format!("takes the same port as {other} in")
            };
            return Err(at(
                field,
                format!("{addr} {same} `{first}`: every listener needs an address of its own"),
            ));
        }
    }
    Ok(())
}

/// Reads `text`, the value of `field`, as a socket address; a mistake is answered with an example
/// on `port`.
fn address(
    field: &str,
    text: &str,
    port: u16,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        at(
            field,
            format!("`{text}` is not an address like 127.0.0.1:{port} or [::1]:{port}"),
        )
    })
}

/// [`address`] for a listener of its own (the admin API, the metrics), which must not take one of
/// the traffic listeners' addresses (`listen`); `needs_its_own` ends the message that says so.
/// Port 0 picks a free port, so it never clashes.
fn own_address(
    field: &str,
    text: &str,
    port: u16,
    listen: &[SocketAddr],
    needs_its_own: &str,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SocketAddr, ConfigError> {
    let addr = address(field, text, port, at)?;
    if addr.port() != 0 && listen.contains(&addr) {
        return Err(at(
            field,
            format!("{addr} is also in `listen`: {needs_its_own}"),
        ));
    }
    Ok(addr)
}

fn invalid(text: &str, path: &Path, field: &str, message: String) -> ConfigError {
    let (line, column) =
        locate::offset_of(text, field).map_or((1, 1), |o| locate::line_col(text, o));
    ConfigError::Invalid {
        file: path.display().to_string(),
        line,
        column,
        field: field.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ServerConfig;

    const LISTEN: &str = "listen = [\"127.0.0.1:8080\"]\n";

    fn config(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!("{LISTEN}{extra}"), Path::new("g.toml"))
    }

    fn error(extra: &str) -> String {
        config(extra).expect_err("invalid").to_string()
    }

    #[test]
    fn the_history_retention_is_read_and_bounded() {
        let defaults = config("").unwrap().history;
        assert_eq!(defaults, crate::store::HistoryRetention::default());
        let set = config("[history]\nkeep = 20\nmax_bytes = \"1 MiB\"\n").unwrap();
        assert_eq!((set.history.keep, set.history.max_bytes), (20, 1 << 20));
        let set = config("[history]\nmax_bytes = \"500kB\"\n").unwrap();
        assert_eq!((set.history.keep, set.history.max_bytes), (1000, 500_000));
        for (text, want) in [
            ("keep = 0", "history.keep: must be at least 1"),
            (
                "keep = 100001",
                "history.keep: 100001 is too many (at most 100000)",
            ),
            (
                "max_bytes = \"lots\"",
                "history.max_bytes: `lots` is not a size like \"64MiB\" or \"500kB\"",
            ),
            (
                "max_bytes = \"1kB\"",
                "history.max_bytes: `1kB` is out of range (64KiB to 4GiB)",
            ),
            (
                "max_bytes = \"5GiB\"",
                "history.max_bytes: `5GiB` is out of range (64KiB to 4GiB)",
            ),
        ] {
            let message = error(&format!("[history]\n{text}\n"));
            assert!(message.starts_with("g.toml:"), "{message}");
            assert!(
                message.ends_with(want),
                "{message} does not end with {want}"
            );
        }
        let message = error("[history]\nkept = 3\n");
        assert!(message.contains("unknown field `kept`"), "{message}");
    }

    #[test]
    fn the_fleet_table_is_read_with_its_defaults() {
        use crate::gateway::OnStoreBehind;
        let embedded = config("").unwrap();
        let StoreConfig::Embedded { dir } = &embedded.store else {
            panic!("the default store is embedded: {:?}", embedded.store);
        };
        // In the store's data directory; with Redis (no directory), beside the config.
        assert_eq!(embedded.fleet.snapshot, Some(dir.join("g.snapshot.json")));
        assert_eq!(
            config("[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n")
                .unwrap()
                .fleet
                .snapshot,
            Some(PathBuf::from("g.snapshot.json"))
        );
        let defaults = embedded.fleet;
        assert_eq!(defaults.on_store_behind, OnStoreBehind::Reseed);
        assert_eq!(defaults.heartbeat, Duration::from_secs(2));
        let set = config(
            "[fleet]\nsnapshot = \"state/last.json\"\non_store_behind = \"refuse\"\nheartbeat = \"500ms\"\n",
        )
        .unwrap()
        .fleet;
        assert_eq!(set.snapshot, Some(PathBuf::from("state/last.json")));
        assert_eq!(set.on_store_behind, OnStoreBehind::Refuse);
        assert_eq!(set.heartbeat, Duration::from_millis(500));
        assert_eq!(
            config("[fleet]\nsnapshot = \"\"\n").unwrap().fleet.snapshot,
            None
        );
        let message = error("[fleet]\non_store_behind = \"follow\"\n");
        assert!(
            message
                .ends_with("fleet.on_store_behind: `follow` is not one of \"reseed\", \"refuse\""),
            "{message}"
        );
    }

    #[test]
    fn the_version_header_is_a_header_name_checked_once() {
        assert_eq!(
            config("").unwrap().version_header,
            Some(DEFAULT_VERSION_HEADER)
        );
        assert_eq!(
            config("version_header = \"X-Served-Version\"\n")
                .unwrap()
                .version_header,
            Some(HeaderName::from_static("x-served-version"))
        );
        assert_eq!(
            config("version_header = \"\"\n").unwrap().version_header,
            None
        );
        assert_eq!(
            error("version_header = \"bad header\"\n"),
            "g.toml:2:1: version_header: `bad header` is not a valid header name"
        );
    }

    #[test]
    fn a_syntax_error_the_parser_names_nothing_for_still_says_what_is_wrong() {
        // Found by the generated configs (src/config/generated.rs): a carriage return without
        // its line feed was refused as `g.toml:1:1: : ` and nothing more.
        let e = parse("\r[", Path::new("g.toml")).expect_err("invalid");
        let cr = "invalid TOML: a carriage return (\\r) must be followed by a line feed (\\n)";
        assert_eq!(e.to_string(), format!("g.toml:1:1: : {cr}"));
        let e = config("[store]\nservers = [\r\"a:1\"]\n").expect_err("invalid");
        assert_eq!(e.to_string(), format!("g.toml:3:13: servers: {cr}"));
    }

    #[test]
    fn defaults_are_the_shared_constants() {
        let c = config("").unwrap();
        assert_eq!(c.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(c.max_header_bytes, 32 * 1024);
        assert_eq!(c.reload_interval, DEFAULT_RELOAD_INTERVAL);
        assert_eq!(c.timeouts, Timeouts::default());
    }

    /// The data plane's upstream rules, reported at the line of the field.
    #[test]
    fn upstream_mistakes_name_their_line_and_field() {
        let up = |name: &str, servers: &str| {
            format!("[[upstreams]]\nname = \"{name}\"\nservers = [{servers}]\n")
        };
        let cases = [
            (
                format!("{}{}", up("a", "\"h:1\""), up("a", "\"h:2\"")),
                "g.toml:6:1: upstreams[1].name: upstream `a` is defined twice",
            ),
            (
                up(" ", "\"h:1\""),
                "g.toml:3:1: upstreams[0].name: an upstream needs a name",
            ),
            (
                up("a", ""),
                "g.toml:4:1: upstreams[0].servers: upstream `a` needs at least one server with a weight above 0",
            ),
            (
                up("a", "\"h:1\", \"::1:80\""),
                "g.toml:4:19: upstreams[0].servers[1]: `::1:80` is not host:port",
            ),
            (
                up("a", "\"h:1 weight=3 backup\""),
                "g.toml:4:12: upstreams[0].servers[0]: unknown server option `backup` (known: weight=N)",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(error(&text), message);
        }
        let ok = config(&up("a", "\"[::1]:80 weight=3\"")).unwrap();
        assert_eq!(
            ok.upstreams[0].servers,
            vec![ServerConfig {
                addr: "[::1]:80".into(),
                weight: 3
            }]
        );
    }

    /// `run` binds every listener: two that cannot both be bound are refused by `check`, at the
    /// later one's line.
    #[test]
    fn every_listener_needs_an_address_of_its_own() {
        let cases = [
            (
                "[metrics]\nlisten = \"127.0.0.1:9901\"\n[admin]\nlisten = \"127.0.0.1:9901\"\n",
                "g.toml:5:1: admin.listen: 127.0.0.1:9901 is also `metrics.listen`: every listener needs an address of its own",
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:9901\"\n[admin]\n",
                "g.toml:4:2: admin: 127.0.0.1:9901 is also `metrics.listen`: every listener needs an address of its own",
            ),
            (
                "[metrics]\nlisten = \"0.0.0.0:9091\"\n[admin]\nlisten = \"127.0.0.1:9091\"\n",
                "g.toml:5:1: admin.listen: 127.0.0.1:9091 takes the same port as 0.0.0.0:9091 in `metrics.listen`: every listener needs an address of its own",
            ),
        ];
        for (extra, message) in cases {
            assert_eq!(error(extra), message, "{extra}");
        }
        let twice = parse(
            "listen = [\"127.0.0.1:8080\", \"[::1]:8080\", \"127.0.0.1:8080\"]\n",
            Path::new("g.toml"),
        );
        assert_eq!(
            twice.unwrap_err().to_string(),
            "g.toml:1:43: listen[2]: 127.0.0.1:8080 is also `listen[0]`: every listener needs an address of its own"
        );
        let wildcard = parse(
            "listen = [\"0.0.0.0:8080\", \"10.0.0.1:8080\"]\n",
            Path::new("g.toml"),
        );
        assert!(wildcard.unwrap_err().to_string().starts_with(
            "g.toml:1:27: listen[1]: 10.0.0.1:8080 takes the same port as 0.0.0.0:8080"
        ));
        // Port 0 picks a free port each time; other families and other ports do not clash.
        assert!(
            config("[metrics]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n")
                .is_ok()
        );
        assert!(parse(
            "listen = [\"0.0.0.0:8080\", \"[::1]:8080\", \"127.0.0.1:8081\"]\n",
            Path::new("g.toml")
        )
        .is_ok());
    }

    /// A timer is a deadline `Instant + d`: a duration of billions of years would panic on every
    /// request, so every duration of the file is bounded by `MAX_DURATION`.
    #[test]
    fn every_duration_is_at_most_a_year() {
        let fields = [
            ("[timeouts]\nconnect", "timeouts.connect"),
            ("[timeouts]\nheader", "timeouts.header"),
            (
                "[timeouts]\nupstream_response",
                "timeouts.upstream_response",
            ),
            ("[timeouts]\nidle", "timeouts.idle"),
            ("[timeouts]\nclient_body", "timeouts.client_body"),
            ("[timeouts]\nupstream_body", "timeouts.upstream_body"),
            ("reload_interval", "reload_interval"),
            ("[cache]\nttl", "cache.ttl"),
            ("[cache]\nnegative_ttl", "cache.negative_ttl"),
            ("[cache]\nlookup_timeout", "cache.lookup_timeout"),
            ("[rollouts]\ntick", "rollouts.tick"),
            ("[rollouts]\nlease", "rollouts.lease"),
        ];
        for (key, field) in fields {
            let message = error(&format!("{key} = \"500000000000y\"\n"));
            assert!(
                message.ends_with(&format!(
                    "{field}: `500000000000y` is longer than 365 days, the longest duration accepted"
                )),
                "{message}"
            );
            assert!(message.starts_with("g.toml:"), "{message}");
        }
        let upstream = "[[upstreams]]\nname = \"a\"\nservers = [\"h:1\"]\n";
        for (table, key) in [
            ("health", "interval"),
            ("health", "timeout"),
            ("passive", "ejection"),
            ("passive", "max_ejection"),
        ] {
            let message = error(&format!("{upstream}{table} = {{ {key} = \"366d\" }}\n"));
            assert!(
                message.ends_with(&format!(
                    "upstreams[0].{table}.{key}: `366d` is longer than 365 days, the longest duration accepted"
                )),
                "{message}"
            );
        }
        let c = config("[timeouts]\nidle = \"365d\"\n").unwrap();
        assert_eq!(c.timeouts.idle, MAX_DURATION);
    }

    #[test]
    fn connection_limits_and_the_backlog_have_defaults_and_bounds() {
        let c = config("").unwrap();
        assert_eq!(c.listen_backlog, 511);
        assert_eq!(
            c.max_connections, None,
            "sized for the open-file limit at start"
        );
        assert_eq!(c.metrics.max_connections, 16);
        let c = config("[admin]\n").unwrap();
        let admin = c.admin.unwrap();
        assert_eq!(admin.max_connections, 64);
        assert_eq!(admin.header_timeout, Duration::from_secs(10));

        let c = config(
            "listen_backlog = 4096\nmax_connections = 50\n[metrics]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n[admin]\nmax_connections = 3\nheader_timeout = \"1s\"\n",
        )
        .unwrap();
        assert_eq!((c.listen_backlog, c.max_connections), (4096, Some(50)));
        assert_eq!(c.metrics.max_connections, 2);
        let admin = c.admin.unwrap();
        assert_eq!(admin.max_connections, 3);
        assert_eq!(admin.header_timeout, Duration::from_secs(1));

        for (extra, expected) in [
            ("listen_backlog = 0\n", "g.toml:2:1: listen_backlog: must be at least 1"),
            (
                "listen_backlog = 100000\n",
                "g.toml:2:1: listen_backlog: 100000 is too large (at most 65535; the kernel caps it at net.core.somaxconn anyway)",
            ),
            (
                "max_connections = 0\n",
                "g.toml:2:1: max_connections: must be at least 1 (it is how many connections are served at once)",
            ),
            (
                "max_connections = 2000000\n",
                "g.toml:2:1: max_connections: 2000000 is too large (at most 1000000): every connection takes a file descriptor, and each may need one to its upstream",
            ),
            (
                "[admin]\nmax_connections = 0\n",
                "g.toml:3:1: admin.max_connections: must be at least 1 (it is how many connections are served at once)",
            ),
            (
                "[admin]\nheader_timeout = \"soon\"\n",
                "g.toml:3:1: admin.header_timeout: `soon` is not a duration like \"2s\" or \"300ms\": expected number at 0",
            ),
            (
                "[admin]\nheader_timeout = \"0s\"\n",
                "g.toml:3:1: admin.header_timeout: must be longer than zero",
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1000001\n",
                "g.toml:4:1: metrics.max_connections: 1000001 is too large (at most 1000000): every connection takes a file descriptor, and each may need one to its upstream",
            ),
        ] {
            assert_eq!(error(extra), expected, "{extra}");
        }
    }

    #[test]
    fn cache_bounds_are_checked_and_named() {
        assert_eq!(
            error("[cache]\nmax_bytes = 100\n"),
            "g.toml:3:1: cache.max_bytes: 100 is too small (at least 1024, 1 KiB)"
        );
        assert_eq!(
            error("[cache]\nmax_key_bytes = 0\n"),
            "g.toml:3:1: cache.max_key_bytes: 0 is out of range (1 to 65536, 64 KiB)"
        );
        assert_eq!(
            error("[cache]\nmax_key_bytes = 70000\n"),
            "g.toml:3:1: cache.max_key_bytes: 70000 is out of range (1 to 65536, 64 KiB)"
        );
        assert_eq!(
            error("[cache]\nmax_in_flight = 0\n"),
            "g.toml:3:1: cache.max_in_flight: 0 is out of range (1 to 10000)"
        );
        let c = config("[cache]\nmax_bytes = 1048576\nmax_key_bytes = 512\nmax_in_flight = 8\n")
            .unwrap();
        assert_eq!(
            (
                c.cache.max_bytes,
                c.cache.max_key_bytes,
                c.cache.max_in_flight
            ),
            (1_048_576, 512, 8)
        );
        let defaults = config("").unwrap().cache;
        assert_eq!(defaults, CacheConfig::default());
        assert_eq!(
            (
                defaults.max_bytes,
                defaults.max_key_bytes,
                defaults.max_in_flight
            ),
            (64 * 1024 * 1024, 250, 64)
        );
    }

    /// hyper's read buffer is sized from `max_header_bytes`: it is bounded like the durations.
    #[test]
    fn max_header_bytes_is_at_most_a_mebibyte() {
        assert_eq!(
            error("max_header_bytes = 67108864\n"),
            "g.toml:2:1: max_header_bytes: 67108864 is too large (at most 1048576, 1 MiB): every connection may buffer that much before its request is refused"
        );
        let c = config("max_header_bytes = 1048576\n").unwrap();
        assert_eq!(c.max_header_bytes, MAX_HEADER_BYTES_LIMIT);
    }

    #[test]
    fn memcached_lists_may_escape_their_keys_as_the_original_does() {
        let store = |rest: &str| {
            format!("[store]\nkind = \"memcached\"\nservers = [\"127.0.0.1:11211\"]\n{rest}")
        };
        let c = config(&store(
            "key_escape = { gray_ips = \"uri\", tokens = \"none\" }\n",
        ))
        .unwrap();
        let StoreConfig::Memcached { memcached, .. } = &c.store else {
            panic!("a memcached store: {:?}", c.store);
        };
        assert_eq!(memcached.key_escape["gray_ips"], KeyEscape::Uri);
        assert_eq!(memcached.key_escape["tokens"], KeyEscape::None);
        // Unset: keys as they are, as before the setting existed.
        let c = config(&store("")).unwrap();
        let StoreConfig::Memcached { memcached, .. } = &c.store else {
            panic!("a memcached store: {:?}", c.store);
        };
        assert!(memcached.key_escape.is_empty());

        assert_eq!(
            error(&store("key_escape = { gray_ips = \"url\" }\n")),
            "g.toml:5:16: store.key_escape.gray_ips: `url` is not a key escape (known: none, uri; `uri` escapes keys as the original's memcached client does)"
        );
        assert_eq!(
            error("[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1\"\nkey_escape = { a = \"uri\" }\n"),
            "g.toml:5:1: store.key_escape: `key_escape` is not a setting of the redis store (only of: memcached)"
        );
    }

    #[test]
    fn redis_sentinel_and_cluster_urls_are_read_and_checked() {
        let store =
            |url: &str, extra: &str| format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\n{extra}");
        let redis = |text: &str| match config(text).unwrap().store {
            StoreConfig::Redis(r) => r,
            other => panic!("a redis store: {other:?}"),
        };
        let r = redis(&store(
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/1",
            "",
        ));
        assert_eq!(r.key_prefix, "graygate:");
        // A cluster's default prefix carries a hash tag; a configured one with a tag is kept.
        let r = redis(&store("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", ""));
        assert_eq!(r.key_prefix, "{graygate}:");
        let r = redis(&store(
            "redis+cluster://127.0.0.1:7000",
            "key_prefix = \"app:{gg}:\"\n",
        ));
        assert_eq!(r.key_prefix, "app:{gg}:");

        assert_eq!(
            error(&store("redis+cluster://127.0.0.1:7000", "key_prefix = \"gg:\"\n")),
            "g.toml:5:1: store.key_prefix: `gg:` has no hash tag: in a Redis Cluster graygate's keys must share one slot for its scripts to stay atomic; use a prefix with a tag such as \"{graygate}:\""
        );
        assert_eq!(
            error(&store("redis+sentinel://:secret@h1:x/m", "")),
            "g.toml:4:1: store.url: `redis+sentinel://:***@h1:x/m`: `h1:x` is not host[:port]"
        );
        assert_eq!(
            error(&store("redis+sentinel://h1,h2", "")),
            "g.toml:4:1: store.url: `redis+sentinel://h1,h2`: no master name: redis+sentinel://host:26379,.../<master name>[/<db>]"
        );
        assert!(
            error(&store("http://h1", ""))
                .starts_with("g.toml:4:1: store.url: `http://h1` is not a Redis URL: "),
            "{}",
            error(&store("http://h1", ""))
        );
    }

    #[test]
    fn memcached_servers_are_host_port() {
        let store =
            |servers: &str| format!("[store]\nkind = \"memcached\"\nservers = [{servers}]\n");
        assert!(config(&store("\"127.0.0.1:11211\", \"[::1]:11211\"")).is_ok());
        for bad in ["127.0.0.1", "h:1 weight=2", " h:1", "::1:11211"] {
            assert_eq!(
                error(&store(&format!("\"{bad}\""))),
                format!("g.toml:4:12: store.servers[0]: `{bad}` is not host:port")
            );
        }
    }
}
