//! The store's connections of the moment, whichever the deployment: one server, the primary that
//! the sentinels name, or a Redis Cluster. Everything else in the store sends its commands
//! through a [`Conn`] and does not care which.
//!
//! # Why a link is replaced
//! - One server: the link is made once; its connection manager reconnects by itself.
//! - Sentinel: the link points at one primary. After a failover that primary is gone or demoted,
//!   and reconnecting to its address would never reach the new one, so the background task asks
//!   the sentinels again ([`discover_primary`]) and replaces the link when they name another
//!   primary. A sentinel that is down is skipped (the redis crate asks them in turn and checks the
//!   `ROLE` of the primary it is told about).
//! - Cluster: the cluster client follows the cluster's own failovers and slot moves (`MOVED`,
//!   topology refresh); the link is rebuilt only after the cluster could not be reached at all.

use super::topology::Topology;
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::store::BACKOFF_MIN;
use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline,
    ProtocolVersion, RedisError, RedisFuture, RedisResult, Value,
};
use std::time::Duration;

/// How long one discovery through the sentinels may take as a whole (sentinels asked in turn, the
/// primary's `ROLE` checked).
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The command connection of the moment. Cloning it is cheap and shares the connection.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server (or the sentinels' primary): one multiplexed connection, reconnected by the
    /// manager.
    Manager(ConnectionManager),
    /// A Redis Cluster: commands routed by their keys' slots.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the store is connected right now.
pub(super) struct Link {
    /// Commands.
    pub conn: Conn,
    /// The server with RESP3, for the subscription connection (one server, Sentinel). In a
    /// cluster the subscription connections go to each primary, found when they are opened.
    pub resp3: Option<Client>,
    /// The server as configured (RESP2 unless the URL says otherwise), for the RESP2 fallback
    /// subscription (one server, Sentinel).
    pub client: Option<Client>,
    /// `host:port` of the primary (Sentinel), for the log; empty otherwise.
    pub primary: String,
}

impl Link {
    /// A link to the one server (or primary) `client`.
    pub fn single(client: Client, primary: String) -> RedisResult<Link> {
        let info = client.get_connection_info().clone();
        let resp3_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = Client::open(info.set_redis_settings(resp3_settings))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MIN * 4);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        Ok(Link {
            conn: Conn::Manager(manager),
            resp3: Some(resp3),
            client: Some(client),
            primary,
        })
    }

    /// A link to the cluster that `nodes` belong to; connects in the background.
    pub fn cluster(topology: &Topology, nodes: &[(String, u16)]) -> RedisResult<Link> {
        let urls: Vec<String> = nodes
            .iter()
            .map(|(h, p)| topology.node_url(h, *p))
            .collect();
        let client = ClusterClientBuilder::new(urls)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(1)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()?;
        let conn = client.get_pending_async_connection_with_config(
            ::redis::cluster::ClusterConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT),
        );
        Ok(Link {
            conn: Conn::Cluster(conn),
            resp3: None,
            client: None,
            primary: String::new(),
        })
    }
}

/// The sentinels of `topology` as the redis crate wants them.
pub(super) fn sentinels(topology: &Topology) -> RedisResult<Option<Sentinel>> {
    let Topology::Sentinel { sentinels, .. } = topology else {
        return Ok(None);
    };
    let infos = sentinels
        .iter()
        .map(|(h, p)| {
            let host = if h.contains(':') {
                format!("[{h}]")
            } else {
                h.clone()
            };
            format!("redis://{host}:{p}").into_connection_info()
        })
        .collect::<RedisResult<Vec<ConnectionInfo>>>()?;
    Sentinel::build(infos).map(Some)
}

/// Asks the sentinels which server is the primary named in `topology` (checking its `ROLE`), and
/// returns a client for it (with the URL's credentials and database) and its `host:port`.
pub(super) async fn discover_primary(
    sentinel: &mut Sentinel,
    topology: &Topology,
) -> RedisResult<(Client, String)> {
    let Topology::Sentinel { master, .. } = topology else {
        unreachable!("discovery is for Sentinel only")
    };
    // The data nodes' credentials and database, read by the redis crate from a URL of the same
    // form as any other.
    let template = topology.node_url("127.0.0.1", 1).into_connection_info()?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(template.redis_settings().clone());
    let found = tokio::time::timeout(
        DISCOVERY_TIMEOUT,
        sentinel.async_master_for(master, Some(&node)),
    )
    .await
    .map_err(|_| {
        RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no sentinel answered within {DISCOVERY_TIMEOUT:?}"),
        ))
    })??;
    let address = found.get_connection_info().addr().to_string();
    Ok((found, address))
}

/// Direct connections to the sentinels, to ask them cheaply which server is the primary
/// (`SENTINEL get-master-addr-by-name`) without the `ROLE` check of a full discovery: the
/// background task asks every second, and a policy save asks before it writes, so that a write
/// does not go to a primary the sentinels have already replaced (it would be lost when that
/// server turns replica).
pub(super) struct SentinelWatch {
    master: String,
    clients: Vec<Client>,
    /// One cached connection per sentinel, in the URL's order.
    conns: tokio::sync::Mutex<Vec<Option<MultiplexedConnection>>>,
}

impl SentinelWatch {
    pub fn new(topology: &Topology) -> RedisResult<Option<SentinelWatch>> {
        let Topology::Sentinel {
            sentinels, master, ..
        } = topology
        else {
            return Ok(None);
        };
        let clients = sentinels
            .iter()
            .map(|(h, p)| {
                let host = if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.clone()
                };
                Client::open(format!("redis://{host}:{p}"))
            })
            .collect::<RedisResult<Vec<Client>>>()?;
        let conns = tokio::sync::Mutex::new(vec![None; clients.len()]);
        Ok(Some(SentinelWatch {
            master: master.clone(),
            clients,
            conns,
        }))
    }

    /// `host:port` of the primary as the first sentinel that answers names it; `None` when none
    /// answers (a sentinel that is down is skipped).
    pub async fn named_primary(&self) -> Option<String> {
        let mut conns = self.conns.lock().await;
        for (client, cached) in self.clients.iter().zip(conns.iter_mut()) {
            if cached.is_none() {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let connect = client.get_multiplexed_async_connection_with_config(&config);
                match tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, connect).await {
                    Ok(Ok(conn)) => *cached = Some(conn),
                    _ => continue,
                }
            }
            let Some(conn) = cached.as_mut() else {
                continue;
            };
            let mut cmd = ::redis::cmd("SENTINEL");
            cmd.arg("get-master-addr-by-name").arg(&self.master);
            let asked = cmd.query_async::<Option<(String, u16)>>(conn);
            match tokio::time::timeout(RESPONSE_TIMEOUT + RESPONSE_TIMEOUT, asked).await {
                Ok(Ok(Some((host, port)))) => return Some(format!("{host}:{port}")),
                // This sentinel does not know the name: ask the next.
                Ok(Ok(None)) => {}
                _ => *cached = None,
            }
        }
        None
    }
}

/// The `ROLE` of the server behind `conn`: whether it is a primary.
pub(super) async fn is_primary(conn: &mut Conn) -> RedisResult<bool> {
    let role: Value = ::redis::cmd("ROLE").query_async(conn).await?;
    let first = match role {
        Value::Array(items) => items.into_iter().next(),
        _ => None,
    };
    Ok(match first {
        Some(Value::BulkString(b)) => b == b"master",
        Some(Value::SimpleString(s)) => s == "master",
        _ => false,
    })
}

/// The primaries of the cluster behind `conn`, as `host:port` (`CLUSTER SLOTS`, asked of any
/// node), sorted.
pub(super) async fn cluster_primaries(conn: &mut Conn) -> RedisResult<Vec<(String, u16)>> {
    let Conn::Cluster(cluster) = conn else {
        return Ok(Vec::new());
    };
    let mut cmd = ::redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    let reply = cluster
        .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
        .await?;
    let mut out = primaries_of_slots(reply);
    out.sort();
    out.dedup();
    Ok(out)
}

/// The primaries named in a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...],
/// replicas...], ...]`.
fn primaries_of_slots(reply: Value) -> Vec<(String, u16)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .into_iter()
        .filter_map(|range| {
            let Value::Array(items) = range else {
                return None;
            };
            let Some(Value::Array(primary)) = items.into_iter().nth(2) else {
                return None;
            };
            let mut it = primary.into_iter();
            let host = match it.next()? {
                Value::BulkString(b) => String::from_utf8(b).ok()?,
                Value::SimpleString(s) => s,
                _ => return None,
            };
            let port = match it.next()? {
                Value::Int(p) => u16::try_from(p).ok()?,
                _ => return None,
            };
            Some((host, port))
        })
        .collect()
}

/// Sends `cmd` to the cluster node at `host:port` (a `SCAN`, which has no key to route by).
pub(super) async fn on_node(
    conn: &mut Conn,
    host: &str,
    port: u16,
    cmd: Cmd,
) -> RedisResult<Value> {
    match conn {
        Conn::Cluster(c) => {
            c.route_command(
                cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port,
                }),
            )
            .await
        }
        Conn::Manager(c) => cmd.query_async(c).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn primaries_are_read_from_cluster_slots() {
        let node =
            |host: &str, port: i64| Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
            ]),
            // Garbage is skipped, not a panic.
            Value::Array(vec![Value::Int(1)]),
            Value::Nil,
        ]);
        assert_eq!(
            primaries_of_slots(reply),
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
        assert!(primaries_of_slots(Value::Nil).is_empty());
    }
}
