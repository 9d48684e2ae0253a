//! Which Redis deployment the store talks to, read from its URL: one server, a primary found
//! through Redis Sentinel, or a Redis Cluster. Pure (no connection), so that the URL forms and
//! the hash-tag rule are one place to read and to test.
//!
//! # URL forms
//! - `redis://...`, `rediss://...`, `redis+unix://...`: one server, as the redis crate reads it.
//! - `redis+sentinel://[<user>][:<password>@]<host>[:<port>],<host>[:<port>],.../<master>[/<db>]`:
//!   the sentinels (port 26379 by default) and the name of the primary they watch. The user and
//!   password are the primary's (and its replicas'); the sentinels are asked without a password.
//! - `redis+cluster://[<user>][:<password>@]<host>[:<port>],<host>[:<port>],...`: some nodes of a
//!   Redis Cluster (port 6379 by default); the client learns the others from them.
//!
//! The redis crate has Sentinel and Cluster clients but no URL form for them: this module is the
//! URL form. TLS is not offered for Sentinel and Cluster (`rediss+sentinel://` is refused by
//! name) because it is untested here.
//!
//! # The hash-tag rule (Cluster)
//! graygate's scripts (policy save with its history, leases, records with their index) touch
//! several keys at once, which Redis Cluster allows only within one hash slot. Every key graygate
//! writes starts with `key_prefix`, so the prefix must carry a hash tag (`{...}`, Redis' rule:
//! the text between the first `{` and the next `}`, if not empty) that decides the slot of every
//! key after it: [`hash_tag`].

/// Default port of a Redis Sentinel.
pub const SENTINEL_PORT: u16 = 26379;
/// Default port of a Redis server (Cluster nodes).
pub const REDIS_PORT: u16 = 6379;
/// Default `key_prefix` in Cluster mode: every key of graygate's in one slot.
pub const CLUSTER_KEY_PREFIX: &str = "{graygate}:";

/// Which deployment a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (the URL as the redis crate reads it).
    Single,
    /// A primary found through sentinels.
    Sentinel {
        /// The sentinels, in the order given (asked in that order).
        sentinels: Vec<(String, u16)>,
        /// The name under which the sentinels monitor the primary.
        master: String,
        /// The database index on the primary.
        db: i64,
        /// `redis://<userinfo>@` prefix for the data nodes (`""` without credentials), still
        /// percent-encoded, so that the redis crate decodes it as for any URL.
        userinfo: String,
    },
    /// Some nodes of a Redis Cluster.
    Cluster {
        nodes: Vec<(String, u16)>,
        /// As for [`Topology::Sentinel`].
        userinfo: String,
    },
}

impl Topology {
    /// The URL of a data node at `host:port` with the URL's credentials (and database).
    pub fn node_url(&self, host: &str, port: u16) -> String {
        let (userinfo, db) = match self {
            Topology::Single => ("", 0),
            Topology::Sentinel { userinfo, db, .. } => (userinfo.as_str(), *db),
            Topology::Cluster { userinfo, .. } => (userinfo.as_str(), 0),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("redis://{userinfo}{host}:{port}/{db}")
    }
}

/// Why a URL is not one of the forms above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`{scheme}://` is not supported (TLS to sentinels or cluster nodes is not offered); use redis+sentinel:// or redis+cluster://")]
    TlsUnsupported { scheme: String },
    #[error("no hosts: give them as `host:port,host:port`")]
    NoHosts,
    #[error("`{host}` is not host[:port]")]
    BadHost { host: String },
    #[error("no master name: redis+sentinel://host:26379,.../<master name>[/<db>]")]
    NoMaster,
    #[error("`{db}` is not a database index")]
    BadDb { db: String },
    #[error("a cluster has one database: nothing may follow the hosts (`{path}`)")]
    ClusterPath { path: String },
}

/// The deployment `url` names; `Single` for any URL that is not a Sentinel or Cluster form
/// (the redis crate checks those).
pub fn parse(url: &str) -> Result<Topology, UrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(Topology::Single);
    };
    let scheme_lc = scheme.to_ascii_lowercase();
    let default_port = match scheme_lc.as_str() {
        "redis+sentinel" | "valkey+sentinel" => SENTINEL_PORT,
        "redis+cluster" | "valkey+cluster" => REDIS_PORT,
        "rediss+sentinel" | "rediss+cluster" | "valkeys+sentinel" | "valkeys+cluster" => {
            return Err(UrlError::TlsUnsupported {
                scheme: scheme.to_owned(),
            })
        }
        _ => return Ok(Topology::Single),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (format!("{}@", &authority[..at]), &authority[at + 1..]),
        None => (String::new(), authority),
    };
    let hosts = parse_hosts(hosts, default_port)?;
    if default_port == SENTINEL_PORT {
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or("");
        if master.is_empty() {
            return Err(UrlError::NoMaster);
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| UrlError::BadDb { db: db.to_owned() })?,
        };
        if let Some(extra) = parts.next().filter(|p| !p.is_empty()) {
            return Err(UrlError::BadDb {
                db: format!("{db}/{extra}"),
            });
        }
        Ok(Topology::Sentinel {
            sentinels: hosts,
            master: master.to_owned(),
            db,
            userinfo,
        })
    } else {
        if !path.is_empty() && path != "0" {
            return Err(UrlError::ClusterPath {
                path: path.to_owned(),
            });
        }
        Ok(Topology::Cluster {
            nodes: hosts,
            userinfo,
        })
    }
}

/// `host[:port],host[:port]...`; an IPv6 address in brackets.
fn parse_hosts(hosts: &str, default_port: u16) -> Result<Vec<(String, u16)>, UrlError> {
    if hosts.trim().is_empty() {
        return Err(UrlError::NoHosts);
    }
    hosts
        .split(',')
        .map(|h| {
            let bad = || UrlError::BadHost { host: h.to_owned() };
            let (host, port) = if let Some(v6) = h.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(bad)?;
                match after {
                    "" => (host, None),
                    p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
                }
            } else {
                match h.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (h, None),
                }
            };
            let port = match port {
                None => default_port,
                Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
            };
            let valid = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
            if !valid {
                return Err(bad());
            }
            Ok((host.to_owned(), port))
        })
        .collect()
}

/// The hash tag that decides the slot of every key starting with `prefix`, or `None` when keys
/// under `prefix` may land in different slots. Redis hashes the text between the first `{` and
/// the first `}` after it, when that text is not empty; so the tag must be complete inside the
/// prefix.
pub fn hash_tag(prefix: &str) -> Option<&str> {
    let open = prefix.find('{')?;
    let close = prefix[open + 1..].find('}')? + open + 1;
    let tag = &prefix[open + 1..close];
    (!tag.is_empty()).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[(&str, u16)]) -> Vec<(String, u16)> {
        list.iter().map(|(h, p)| (h.to_string(), *p)).collect()
    }

    #[test]
    fn single_server_urls_are_left_to_the_redis_crate() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://h/1",
            "redis+unix:///run/r.sock?db=1",
            "nonsense",
        ] {
            assert_eq!(parse(url), Ok(Topology::Single), "{url}");
        }
    }

    #[test]
    fn sentinel_urls() {
        assert_eq!(
            parse("redis+sentinel://127.0.0.1:26380,127.0.0.2,[::1]:26381/mymaster/2"),
            Ok(Topology::Sentinel {
                sentinels: hosts(&[("127.0.0.1", 26380), ("127.0.0.2", 26379), ("::1", 26381)]),
                master: "mymaster".to_owned(),
                db: 2,
                userinfo: String::new(),
            })
        );
        let t = parse("redis+sentinel://u:p%40ss@h1:1,h2:2/m").unwrap();
        assert_eq!(
            t,
            Topology::Sentinel {
                sentinels: hosts(&[("h1", 1), ("h2", 2)]),
                master: "m".to_owned(),
                db: 0,
                userinfo: "u:p%40ss@".to_owned(),
            }
        );
        assert_eq!(
            t.node_url("10.0.0.9", 6380),
            "redis://u:p%40ss@10.0.0.9:6380/0"
        );
        assert_eq!(
            parse("redis+sentinel://h1/m/").map(|t| t.node_url("::1", 7)),
            Ok("redis://[::1]:7/0".to_owned())
        );
    }

    #[test]
    fn bad_sentinel_and_cluster_urls_say_what_is_wrong() {
        let cases = [
            ("redis+sentinel://h1,h2", "no master name: redis+sentinel://host:26379,.../<master name>[/<db>]"),
            ("redis+sentinel://h1/", "no master name: redis+sentinel://host:26379,.../<master name>[/<db>]"),
            ("redis+sentinel:///m", "no hosts: give them as `host:port,host:port`"),
            ("redis+sentinel://h1:x/m", "`h1:x` is not host[:port]"),
            ("redis+sentinel://h1,,h2/m", "`` is not host[:port]"),
            ("redis+sentinel://h1:0/m", "`h1:0` is not host[:port]"),
            ("redis+sentinel://h1/m/x", "`x` is not a database index"),
            ("redis+sentinel://h1/m/-1", "`-1` is not a database index"),
            ("redis+sentinel://h1/m/1/2", "`1/2` is not a database index"),
            ("redis+cluster://h1:7000/3", "a cluster has one database: nothing may follow the hosts (`3`)"),
            ("redis+cluster://[::1:7000", "`[::1:7000` is not host[:port]"),
            ("redis+cluster://h 1:7000", "`h 1:7000` is not host[:port]"),
            ("rediss+cluster://h1", "`rediss+cluster://` is not supported (TLS to sentinels or cluster nodes is not offered); use redis+sentinel:// or redis+cluster://"),
        ];
        for (url, message) in cases {
            assert_eq!(parse(url).unwrap_err().to_string(), message, "{url}");
        }
    }

    #[test]
    fn cluster_urls() {
        assert_eq!(
            parse("redis+cluster://:secret@127.0.0.1:7000,127.0.0.1:7001,h3"),
            Ok(Topology::Cluster {
                nodes: hosts(&[("127.0.0.1", 7000), ("127.0.0.1", 7001), ("h3", 6379)]),
                userinfo: ":secret@".to_owned(),
            })
        );
        assert!(matches!(
            parse("redis+cluster://h1:7000/"),
            Ok(Topology::Cluster { .. })
        ));
    }

    #[test]
    fn the_hash_tag_must_be_complete_inside_the_prefix() {
        assert_eq!(hash_tag(CLUSTER_KEY_PREFIX), Some("graygate"));
        assert_eq!(hash_tag("app:{gg}:"), Some("gg"));
        assert_eq!(hash_tag("{a}{b}"), Some("a"));
        // Redis hashes the whole key when the first braces are empty.
        assert_eq!(hash_tag("{}{b}:"), None);
        assert_eq!(hash_tag("graygate:"), None);
        // Not closed inside the prefix: the rest of each key would decide the tag.
        assert_eq!(hash_tag("{graygate:"), None);
        assert_eq!(hash_tag("graygate}:"), None);
        assert_eq!(hash_tag(""), None);
    }

    /// The rule agrees with the cluster client's own slot function: every key under a tagged
    /// prefix lands in the slot of the tag.
    #[test]
    fn keys_under_a_tagged_prefix_share_one_slot() {
        use ::redis::cluster_routing::Slot;
        let prefix = CLUSTER_KEY_PREFIX;
        let slot = Slot::for_key("graygate");
        for suffix in [
            "policy",
            "history",
            "record:a{b}",
            "lease:x",
            "list:ips:10.0.0.1",
            "}{",
        ] {
            assert_eq!(Slot::for_key(format!("{prefix}{suffix}")), slot, "{suffix}");
        }
        // Without the tag they spread.
        assert_ne!(
            Slot::for_key("graygate:policy"),
            Slot::for_key("graygate:history")
        );
    }
}
