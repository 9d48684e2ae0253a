//! The config file as written: one plain serde struct per TOML table, before any validation.
//!
//! [`super::parse`] reads these and turns them into the validated [`super::Config`]; nothing here
//! checks more than the shape (unknown keys are refused, with their line). They are public and
//! serializable so that whoever writes a config file (the end-to-end tests, a generator) builds it
//! from the same types graygate reads, with `toml::to_string`, instead of pasting text together:
//! a renamed key then fails to compile rather than at start. Unset options are left out when
//! written, so a file written from a default value is as short as one written by hand.

use crate::policy::PolicyDoc;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The whole file: the top-level keys and one field per table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Addresses the plain (not TLS) data plane listens on (`"127.0.0.1:8080"`); required, and
    /// may be empty when `[tls] listen` is not.
    #[serde(default)]
    pub listen: Vec<String>,
    /// `[store]`; absent: the embedded store in `graygate-data`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub store: StoreFile,
    /// `[cache]`: the lookup cache in front of a shared store.
    #[serde(default, skip_serializing_if = "is_default")]
    pub cache: CacheFile,
    /// `[client_ip]`: whose forwarding headers are believed.
    #[serde(default, skip_serializing_if = "is_default")]
    pub client_ip: ClientIpFile,
    /// `[timeouts]`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: TimeoutsFile,
    /// Largest request head accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Listen backlog of every listener (connections the kernel holds until they are accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_backlog: Option<u32>,
    /// Client connections of the data plane open at once (plain and TLS together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// `[[upstreams]]`: the servers the policy's versions name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamFile>,
    /// `[policy]`: the policy inline (not together with `policy_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyDoc>,
    /// The policy in its own TOML file, relative to this file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<String>,
    /// Full policy reload from the store, as a duration (`"5s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_interval: Option<String>,
    /// Request header naming the chosen version; `""` sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_header: Option<String>,
    /// Worker threads of the data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// `[metrics]`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub metrics: MetricsFile,
    /// `[access_log]`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub access_log: AccessLogFile,
    /// `[log]`: the process log.
    #[serde(default, skip_serializing_if = "is_default")]
    pub log: LogFile,
    /// Also name the answering version in a response header to the client.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub response_version_header: bool,
    /// `[admin]`; absent: no admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminFile>,
    /// `[rollouts]`: how the rollout driver runs.
    #[serde(default, skip_serializing_if = "is_default")]
    pub rollouts: RolloutsFile,
    /// `[tls]`; absent: no TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// `[http2]`: limits of HTTP/2 client connections.
    #[serde(default, skip_serializing_if = "is_default")]
    pub http2: Http2File,
    /// `[history]`: how much policy history the store keeps.
    #[serde(default, skip_serializing_if = "is_default")]
    pub history: HistoryFile,
    /// `[fleet]`: the last-known-good snapshot, a store that lost its data, the heartbeat.
    #[serde(default, skip_serializing_if = "is_default")]
    pub fleet: FleetFile,
}

/// `[fleet]`: how this instance keeps its last-known-good policy and meets the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// The snapshot file, relative to the config's directory; default
    /// `<config file stem>.snapshot.json` in the store's data directory (embedded, memcached),
    /// beside the config for Redis; `""` keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// `"reseed"` (default) or `"refuse"`: what to do when the store holds an older revision
    /// than this instance applied, or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_behind: Option<String>,
    /// How often the heartbeat record is renewed (`"2s"`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
}

/// `[history]`: the retention of the policy history; the oldest records go first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    /// How many changes are kept at most; default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
    /// How many bytes of history records are kept at most (`"64MiB"`, `"500kB"`, or a number of
    /// bytes as a string); default `"64MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<String>,
}

/// `[tls]`: the TLS listeners and their certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Addresses of the TLS listeners (`"0.0.0.0:443"`); at least one.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Certificate and key files; the first is the default, the others are chosen by SNI.
    #[serde(default)]
    pub certs: Vec<CertFile>,
    /// The plain listeners answer 308 to `https://` instead of proxying.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_http: bool,
    /// How often the certificate and key files are checked for changes (`"2s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_interval: Option<String>,
}

/// One entry of `[tls] certs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM certificate chain, the server's certificate first; relative to the config's directory.
    pub cert: String,
    /// PEM private key of that certificate.
    pub key: String,
}

/// `[http2]`: the flood limits of HTTP/2 client connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2File {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_accept_reset_streams: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_local_error_reset_streams: Option<usize>,
}

/// `[rollouts]`: how often rollouts are looked at, and how long the driver's lease lasts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutsFile {
    /// How often each instance publishes its counters and the driver judges the windows;
    /// default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<String>,
    /// How long the driver's store lease lasts without renewal (another instance takes over
    /// within this time after the driver dies); default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// `[store]`: which keys go with which kind is checked by validation, not here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `embedded` (default), `redis` or `memcached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// embedded, memcached: the embedded store's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// redis
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// redis
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// memcached
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// redis, memcached: list name -> key prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<HashMap<String, String>>,
    /// memcached: list name -> how its keys are written, `none` (default) or `uri` (escaped with
    /// `ngx.escape_uri`, as the original's client writes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_escape: Option<HashMap<String, String>>,
}

/// `[cache]`: durations as written (`"200ms"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// Most bytes of cached answers (keys, values and per-entry overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Longest lookup key asked for; longer is answered as no identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key_bytes: Option<usize>,
    /// Most lookups in flight to the store at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_timeout: Option<String>,
}

/// `[client_ip]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpFile {
    /// Networks whose forwarding headers are believed (`"127.0.0.0/8"`, `"::1"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// `forwarded` (default) or `original`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Remove `Forwarded` and `X-Forwarded-*` (but `X-Forwarded-For`) from untrusted peers
    /// (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_untrusted_forwarded: Option<bool>,
}

/// `[timeouts]`: durations as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<String>,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: String,
    /// `"host:port"` (or `"https://host:port"`: TLS), optionally followed by ` weight=N`.
    pub servers: Vec<String>,
    /// `health = { ... }`: active health checks of the servers; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthFile>,
    /// `passive = { ... }`: passive ejection; absent: on, with its defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveFile>,
    /// `http1` (default), `h2` (HTTP/2 over TLS) or `h2c` (HTTP/2 over plain TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// TLS to the servers; default: on when they are written `https://` or `protocol = "h2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// TLS: the CA file the servers' certificates are verified with; default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// TLS: the name sent as SNI and verified; default: each server's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// TLS: a client certificate (chain) for servers that require one, with `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// TLS: the client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// An upstream's `health`: every key optional (defaults in `docs/config.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// The path requested (`GET`); default `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Between the starts of two rounds of checks; default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Bound of one check; default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Passed checks in a row that bring a server back; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<u32>,
    /// Failed checks in a row that take a server out; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<u32>,
    /// Statuses that pass; default `[200]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statuses: Option<Vec<u16>>,
    /// The `Host` of a check; default the server's `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// An upstream's `passive`: every key optional (defaults in `docs/config.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveFile {
    /// Failed answers in a row that eject a server; 0: off; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// A first ejection's length; default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<String>,
    /// The longest ejection; default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Address of the metrics listener; absent: no listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Scrape connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

/// `[access_log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// `off` (default), `text` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `"-"` (default): stdout; else a file relative to the config's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `[log]`: how graygate's own messages are written to stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `text` (default) or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Where the admin API listens; absent: the default loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Bearer tokens; none: no authentication, loopback only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenFile>,
    /// Admin connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// A request's headers must arrive within this (`"10s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    /// How long a dashboard sign-in lasts (`"8h"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ttl: Option<String>,
}

/// One entry of `[admin] tokens`: exactly one of `token` and `token_env` (checked by validation).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// Recorded in the history for changes made with this token.
    pub name: String,
    /// The secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An environment variable holding the secret, read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_env", &self.token_env)
            .finish()
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::policy::model::{Condition, RuleDoc, ServiceDoc, SplitDoc};
    use std::collections::BTreeMap;
    use std::path::Path;

    /// Every table and key set, none at its default.
    fn everything() -> ConfigFile {
        let web = ServiceDoc {
            name: "web".into(),
            stable: "stable".into(),
            versions: BTreeMap::from([
                ("stable".into(), "stable".into()),
                ("canary".into(), "canary".into()),
            ]),
            override_: None,
            follow: false,
            rules: vec![RuleDoc {
                name: "beta".into(),
                version: "canary".into(),
                when: Condition {
                    header: Some("X-Env".into()),
                    equals: Some("beta".into()),
                    ..Condition::default()
                },
            }],
            split: Some(SplitDoc {
                weights: BTreeMap::from([("canary".into(), 12.5)]),
                by: None,
                salt: None,
                sticky_cookie: None,
            }),
            previous_stable: None,
            previous_weight: None,
            rollout: None,
            mirror: None,
        };
        ConfigFile {
            listen: vec!["127.0.0.1:8080".into(), "[::1]:8080".into()],
            store: StoreFile {
                kind: Some("redis".into()),
                url: Some("redis://127.0.0.1:6379/2".into()),
                key_prefix: Some("gg:".into()),
                lists: Some(HashMap::from([("redis".into(), String::new())])),
                ..StoreFile::default()
            },
            cache: CacheFile {
                max_entries: Some(10),
                max_bytes: Some(1_048_576),
                max_key_bytes: Some(512),
                max_in_flight: Some(8),
                ttl: Some("200ms".into()),
                negative_ttl: Some("1s".into()),
                lookup_timeout: Some("30ms".into()),
            },
            client_ip: ClientIpFile {
                trusted_proxies: vec!["127.0.0.0/8".into(), "::1".into()],
                mode: Some("original".into()),
                strip_untrusted_forwarded: Some(false),
            },
            timeouts: TimeoutsFile {
                connect: Some("1s".into()),
                header: Some("2s".into()),
                upstream_response: Some("3s".into()),
                idle: Some("4s".into()),
                client_body: Some("5s".into()),
                upstream_body: Some("6s".into()),
                shutdown: Some("7s".into()),
            },
            max_header_bytes: Some(4096),
            listen_backlog: Some(1024),
            max_connections: Some(2000),
            upstreams: vec![
                UpstreamFile {
                    name: "stable".into(),
                    servers: vec!["127.0.0.1:18080".into()],
                    ..UpstreamFile::default()
                },
                UpstreamFile {
                    name: "canary".into(),
                    servers: vec!["127.0.0.1:19090 weight=3".into()],
                    health: Some(HealthFile {
                        path: Some("/ready?deep=1".into()),
                        interval: Some("5s".into()),
                        timeout: Some("500ms".into()),
                        healthy: Some(1),
                        unhealthy: Some(2),
                        statuses: Some(vec![200, 204]),
                        host: Some("canary.internal".into()),
                    }),
                    passive: Some(PassiveFile {
                        failures: Some(3),
                        ejection: Some("30s".into()),
                        max_ejection: Some("10m".into()),
                    }),
                    protocol: Some("h2c".into()),
                    ..UpstreamFile::default()
                },
            ],
            policy: Some(PolicyDoc {
                routes: Vec::new(),
                services: vec![web],
                ..PolicyDoc::default()
            }),
            policy_file: None,
            reload_interval: Some("7s".into()),
            version_header: Some("x-served-version".into()),
            workers: Some(2),
            metrics: MetricsFile {
                listen: Some("127.0.0.1:9091".into()),
                max_connections: Some(4),
            },
            access_log: AccessLogFile {
                format: Some("json".into()),
                path: Some("-".into()),
            },
            log: LogFile {
                format: Some("json".into()),
            },
            response_version_header: true,
            admin: Some(AdminFile {
                listen: Some("127.0.0.1:0".into()),
                tokens: vec![TokenFile {
                    name: "alice".into(),
                    token: Some("alice-token-0123456789".into()),
                    token_env: None,
                }],
                max_connections: Some(8),
                header_timeout: Some("3s".into()),
                session_ttl: Some("1h".into()),
            }),
            rollouts: RolloutsFile {
                tick: Some("500ms".into()),
                lease: Some("3s".into()),
            },
            // `[tls]` needs certificate files: config::tls tests it.
            tls: None,
            http2: Http2File {
                max_concurrent_streams: Some(50),
                max_pending_accept_reset_streams: Some(10),
                max_local_error_reset_streams: Some(100),
            },
            history: HistoryFile {
                keep: Some(500),
                max_bytes: Some("16MiB".into()),
            },
            fleet: FleetFile {
                snapshot: Some("state/snapshot.json".into()),
                on_store_behind: Some("refuse".into()),
                heartbeat: Some("1s".into()),
            },
        }
    }

    /// The same config, written by hand.
    const BY_HAND: &str = r#"
listen = ["127.0.0.1:8080", "[::1]:8080"]
max_header_bytes = 4096
listen_backlog = 1024
max_connections = 2000
reload_interval = "7s"
version_header = "x-served-version"
workers = 2
response_version_header = true

[store]
kind = "redis"
url = "redis://127.0.0.1:6379/2"
key_prefix = "gg:"
lists = { redis = "" }

[cache]
max_entries = 10
max_bytes = 1048576
max_key_bytes = 512
max_in_flight = 8
ttl = "200ms"
negative_ttl = "1s"
lookup_timeout = "30ms"

[client_ip]
trusted_proxies = ["127.0.0.0/8", "::1"]
mode = "original"
strip_untrusted_forwarded = false

[timeouts]
connect = "1s"
header = "2s"
upstream_response = "3s"
idle = "4s"
client_body = "5s"
upstream_body = "6s"
shutdown = "7s"

[[upstreams]]
name = "stable"
servers = ["127.0.0.1:18080"]

[[upstreams]]
name = "canary"
servers = ["127.0.0.1:19090 weight=3"]
health = { path = "/ready?deep=1", interval = "5s", timeout = "500ms", healthy = 1, unhealthy = 2, statuses = [200, 204], host = "canary.internal" }
passive = { failures = 3, ejection = "30s", max_ejection = "10m" }
protocol = "h2c"

[metrics]
listen = "127.0.0.1:9091"
max_connections = 4

[access_log]
format = "json"
path = "-"

[log]
format = "json"

[admin]
listen = "127.0.0.1:0"
tokens = [{ name = "alice", token = "alice-token-0123456789" }]
max_connections = 8
header_timeout = "3s"
session_ttl = "1h"

[rollouts]
tick = "500ms"
lease = "3s"

[http2]
max_concurrent_streams = 50
max_pending_accept_reset_streams = 10
max_local_error_reset_streams = 100

[history]
keep = 500
max_bytes = "16MiB"

[fleet]
snapshot = "state/snapshot.json"
on_store_behind = "refuse"
heartbeat = "1s"

[[policy.services]]
name = "web"
stable = "stable"
versions = { stable = "stable", canary = "canary" }
[[policy.services.rules]]
name = "beta"
version = "canary"
when = { header = "X-Env", equals = "beta" }
[policy.services.split]
weights = { canary = 12.5 }
"#;

    #[test]
    fn a_written_file_parses_back_into_the_same_config() {
        let path = Path::new("/etc/graygate/graygate.toml");
        let written = toml::to_string(&everything()).expect("serializes");
        let read: ConfigFile = toml::from_str(&written).expect("parses");
        assert_eq!(read, everything(), "{written}");

        let from_written = parse(&written, path).unwrap_or_else(|e| panic!("{e}\n{written}"));
        let from_hand = parse(BY_HAND, path).expect("the hand-written config is valid");
        assert_eq!(format!("{from_written:?}"), format!("{from_hand:?}"));
        assert_eq!(
            from_written.admin.unwrap().tokens[0].secret,
            "alice-token-0123456789"
        );
    }

    #[test]
    fn unset_options_are_left_out() {
        let minimal = ConfigFile {
            listen: vec!["127.0.0.1:8080".into()],
            ..ConfigFile::default()
        };
        assert_eq!(
            toml::to_string(&minimal).unwrap(),
            "listen = [\"127.0.0.1:8080\"]\n"
        );
        let admin = ConfigFile {
            admin: Some(AdminFile::default()),
            ..minimal
        };
        let written = toml::to_string(&admin).unwrap();
        assert_eq!(toml::from_str::<ConfigFile>(&written).unwrap(), admin);
        let config = parse(&written, Path::new("g.toml")).unwrap();
        assert_eq!(config.admin.unwrap().listen.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn debug_hides_a_token() {
        let token = TokenFile {
            name: "ci".into(),
            token: Some("0123456789abcdef".into()),
            token_env: None,
        };
        assert!(!format!("{token:?}").contains("0123456789abcdef"));
    }
}
