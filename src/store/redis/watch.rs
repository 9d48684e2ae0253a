//! The Redis store's background task: follows the changes channel and the server's key
//! invalidations on a connection of its own, and tracks the store's health.
//!
//! # The subscription connection
//! A RESP3 connection subscribes to the changes channel and receives Redis' client-side caching
//! invalidations (`CLIENT TRACKING ON BCAST PREFIX ...` for the list prefixes): a `SET`/`DEL`/
//! expiry of a list key by *any* client, redis-cli included, becomes a [`Change::Key`] within
//! milliseconds, with no server configuration. A flush becomes a [`Change::Reset`]. The task pings
//! both connections (this one and the command connection) every second.
//!
//! The task uses RESP3 push messages rather than the RESP2 `REDIRECT <client id>` form of tracking
//! because the redis crate's RESP2 pub/sub connection cannot send `CLIENT ID` before it
//! subscribes, and its own documentation points to RESP3 pushes for this. Both need Redis 6 or
//! later. Fallbacks, chosen at each (re)connect and reported by
//! [`RedisStore::invalidation`](super::RedisStore::invalidation): without RESP3 (Redis < 6) the
//! task subscribes over RESP2; without `CLIENT TRACKING` (older server, or the command is
//! disabled) it follows keyspace notifications if the server's `notify-keyspace-events` has them
//! on (`K` with `A`, or `$`/`g`/`x`); else it says once in the log that list values can be stale
//! for up to the lookup cache's TTL.
//!
//! # Reconnecting
//! When either connection fails ([`WatchError`] says how), the store turns degraded and the task
//! reconnects with exponential backoff (50 ms doubling up to 1 s; up to 250 ms with Sentinel,
//! where each attempt first asks the sentinels which server is the primary now). When the server
//! is back it sends [`Change::Reset`] (invalidations may have been missed) and
//! [`Change::Policy`] with the current revision (a policy change may have been missed).

use super::keys::Notice;
use super::link::{cluster_primaries, Link};
use super::topology::Topology;
use super::{
    is_connection_error, InvalidationMode, Shared, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT,
    OP_TIMEOUT, PING_INTERVAL, RESPONSE_TIMEOUT,
};
use crate::store::{Change, ErrorChain};
use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, Msg, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest wait between two reconnects with Sentinel (see [`Shared::max_backoff`]).
pub(super) const SENTINEL_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Why the subscription could not be opened, or why it ended. Its text ends up in the store's
/// health ([`crate::store::StoreHealth::last_error`]) and in the log, with its cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    /// The server did not answer `step` within `after` (it accepts connections but hangs).
    #[error("{step}: no answer within {after:?}")]
    Timeout {
        /// The command or phase that got no answer (`SUBSCRIBE`, `connecting`).
        step: &'static str,
        after: Duration,
    },
    /// The subscription connection could not be opened.
    #[error("cannot open the subscription connection")]
    Connect(#[source] RedisError),
    /// A command on the subscription connection failed.
    #[error("{command} failed")]
    Command {
        /// The command as Redis names it (`SUBSCRIBE`, `CLIENT TRACKING`).
        command: &'static str,
        #[source]
        source: RedisError,
    },
    /// The command connection does not answer `PING`.
    #[error("the command connection does not answer PING")]
    Ping(#[source] RedisError),
    /// The server closed the subscription connection.
    #[error("the {0} connection closed")]
    Closed(&'static str),
    /// No sentinel named a primary that answers as one (Sentinel), or the cluster client could
    /// not be set up.
    #[error("cannot find the primary")]
    Discover(#[source] RedisError),
}

impl WatchError {
    /// A `map_err` for a failed `command`.
    fn command(command: &'static str) -> impl FnOnce(RedisError) -> WatchError {
        move |source| WatchError::Command { command, source }
    }
}

/// `call` (named `step` in errors) bounded by the response timeout (plus a margin for the
/// connection's own timer).
async fn bounded<T>(step: &'static str, call: impl Future<Output = T>) -> Result<T, WatchError> {
    let after = RESPONSE_TIMEOUT + Duration::from_millis(50);
    tokio::time::timeout(after, call)
        .await
        .map_err(|_| WatchError::Timeout { step, after })
}

/// The command `name`, sent by `call`, bounded like [`bounded`]; a failure is a
/// [`WatchError::Command`].
async fn command<T>(
    name: &'static str,
    call: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, WatchError> {
    bounded(name, call)
        .await?
        .map_err(WatchError::command(name))
}

/// The subscription connection, in whichever protocol the server speaks.
enum Watch {
    /// One connection per server (one for a single server or the sentinels' primary, one per
    /// primary in a cluster), all pushing into `pushes`.
    Resp3 {
        conns: Vec<MultiplexedConnection>,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
    Resp2 {
        sink: PubSubSink,
        stream: PubSubStream,
    },
}

/// What arrived on the subscription connection.
enum Event {
    /// A message on a subscribed channel (the changes channel, or a keyspace notification).
    Message(Msg),
    /// A tracking invalidation: the keys that changed, or nil for a flush.
    Invalidate(Value),
    /// The connection is gone.
    Lost(WatchError),
    /// Anything else (subscription confirmations, pongs).
    Other,
}

impl Watch {
    async fn next(&mut self) -> Event {
        match self {
            Watch::Resp3 { pushes, .. } => {
                let Some(push) = pushes.recv().await else {
                    return Event::Lost(WatchError::Closed("subscription"));
                };
                match push.kind {
                    PushKind::Disconnection => Event::Lost(WatchError::Closed("subscription")),
                    PushKind::Invalidate => {
                        Event::Invalidate(push.data.into_iter().next().unwrap_or(Value::Nil))
                    }
                    PushKind::Message | PushKind::PMessage => {
                        Msg::from_push_info(push).map_or(Event::Other, Event::Message)
                    }
                    _ => Event::Other,
                }
            }
            Watch::Resp2 { stream, .. } => match stream.next().await {
                Some(msg) => Event::Message(msg),
                None => Event::Lost(WatchError::Closed("pub/sub")),
            },
        }
    }

    async fn ping(&mut self) -> Result<(), RedisError> {
        match self {
            Watch::Resp3 { conns, .. } => {
                for conn in conns {
                    ::redis::cmd("PING").query_async::<Value>(conn).await?;
                }
                Ok(Value::Okay)
            }
            Watch::Resp2 { sink, .. } => sink.ping::<Value>().await,
        }
        .map(drop)
    }
}

impl Shared {
    /// The background task: keeps the subscription connection up, turns what arrives on it into
    /// changes, and tracks the store's health. Runs until the store is dropped.
    pub(super) async fn watch(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut announce = self.health.is_degraded();
        loop {
            let connected = async {
                if announce {
                    // After a loss: with Sentinel the primary may have changed (failover), and a
                    // cluster link that could reach nothing is rebuilt.
                    self.relink_if(true).await.map_err(WatchError::Discover)?;
                }
                let watch = self.open_watch().await?;
                self.ping().await.map_err(WatchError::Ping)?;
                Ok::<_, WatchError>(watch)
            }
            .await;
            match connected {
                Ok(mut watch) => {
                    backoff = BACKOFF_MIN;
                    self.health.mark_recovered();
                    if announce {
                        self.announce_reconnect().await;
                    }
                    let lost = self.follow(&mut watch).await;
                    self.mode
                        .store(InvalidationMode::Disconnected.as_u8(), Ordering::Release);
                    self.health.mark_degraded(&format!(
                        "lost the connection to {}: {}",
                        self.target,
                        ErrorChain(&lost)
                    ));
                    announce = true;
                }
                Err(e) => {
                    self.health.mark_degraded(&format!(
                        "cannot reach {}: {}",
                        self.target,
                        ErrorChain(&e)
                    ));
                    announce = true;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.max_backoff());
        }
    }

    /// The longest wait between two reconnects: with Sentinel a new primary is usually named
    /// within seconds of a failure, and asking the sentinels is cheap, so the store asks at least
    /// every [`SENTINEL_BACKOFF_MAX`] to take writes again soon after a failover.
    fn max_backoff(&self) -> Duration {
        match self.topology {
            Topology::Sentinel { .. } => SENTINEL_BACKOFF_MAX,
            _ => BACKOFF_MAX,
        }
    }

    /// After a reconnect: notifications may have been missed, so every cached value may be stale
    /// and the policy may have changed.
    async fn announce_reconnect(&self) {
        self.send(Change::Reset);
        let Ok(mut conn) = self.conn() else {
            return;
        };
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(&self.keys.policy).arg("revision");
        let revision = cmd.query_async::<Option<u64>>(&mut conn);
        if let Ok(Ok(Some(revision))) = tokio::time::timeout(OP_TIMEOUT, revision).await {
            self.send(Change::Policy { revision });
        }
    }

    /// Opens the subscription connection: RESP3 with tracking (or keyspace events), else RESP2.
    /// In a cluster, one RESP3 connection per primary (client tracking and keyspace events are
    /// per node); the changes channel is subscribed on the first, since `PUBLISH` reaches every
    /// node of a cluster.
    async fn open_watch(&self) -> Result<Watch, WatchError> {
        let link = self.link().ok_or(WatchError::Closed("command"))?;
        let targets: Vec<Client> = match &link.resp3 {
            Some(resp3) => vec![resp3.clone()],
            None => {
                let mut conn = link.conn.clone();
                let primaries = command("CLUSTER SLOTS", cluster_primaries(&mut conn)).await?;
                if primaries.is_empty() {
                    return Err(WatchError::Closed("cluster (no primaries)"));
                }
                primaries
                    .iter()
                    .map(|(host, port)| {
                        let url = self.topology.node_url(host, *port);
                        let info = url.as_str().into_connection_info()?;
                        let settings = info
                            .redis_settings()
                            .clone()
                            .set_protocol(ProtocolVersion::RESP3);
                        Client::open(info.set_redis_settings(settings))
                    })
                    .collect::<Result<_, RedisError>>()
                    .map_err(WatchError::Connect)?
            }
        };
        let (tx, pushes) = mpsc::unbounded_channel();
        let mut conns = Vec::with_capacity(targets.len());
        for target in &targets {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_push_sender(tx.clone());
            let after = CONNECT_TIMEOUT + RESPONSE_TIMEOUT;
            let conn = tokio::time::timeout(
                after,
                target.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|_| WatchError::Timeout {
                step: "connecting",
                after,
            })?;
            match conn {
                Ok(conn) => conns.push(conn),
                Err(e) if is_connection_error(&e) => return Err(WatchError::Connect(e)),
                // No RESP3 (Redis < 6): subscribe over RESP2 (one server only: a cluster
                // needs Redis 6 here).
                Err(e) if targets.len() == 1 && link.client.is_some() => {
                    tracing::debug!(error = %e, "RESP3 refused; subscribing over RESP2");
                    return self.watch_resp2(&link).await;
                }
                Err(e) => return Err(WatchError::Connect(e)),
            }
        }
        self.watch_resp3(conns, pushes).await
    }

    async fn watch_resp3(
        &self,
        mut conns: Vec<MultiplexedConnection>,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) -> Result<Watch, WatchError> {
        if let Some(first) = conns.first_mut() {
            command("SUBSCRIBE", first.subscribe(&self.keys.channel)).await?;
        }
        let mut tracking = ::redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON").arg("BCAST");
        for prefix in self.keys.watched_prefixes().unwrap_or_default() {
            tracking.arg("PREFIX").arg(prefix);
        }
        let mut mode = InvalidationMode::Tracking;
        for conn in &mut conns {
            match bounded("CLIENT TRACKING", tracking.query_async::<()>(conn)).await? {
                Ok(()) => {}
                Err(e) if is_connection_error(&e) => {
                    return Err(WatchError::command("CLIENT TRACKING")(e))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "CLIENT TRACKING refused; trying keyspace notifications");
                    mode = InvalidationMode::KeyspaceEvents;
                    break;
                }
            }
        }
        if mode == InvalidationMode::KeyspaceEvents {
            // Every node must send them, or some keys would go unnoticed.
            for conn in &mut conns {
                match self.keyspace_patterns(conn).await? {
                    Some(patterns) => {
                        command("PSUBSCRIBE", conn.psubscribe(patterns)).await?;
                    }
                    None => {
                        mode = InvalidationMode::TtlOnly;
                        break;
                    }
                }
            }
        }
        self.set_mode(mode);
        Ok(Watch::Resp3 { conns, pushes })
    }

    async fn watch_resp2(&self, link: &Link) -> Result<Watch, WatchError> {
        let client = link.client.as_ref().ok_or(WatchError::Closed("command"))?;
        let pubsub = bounded("connecting", client.get_async_pubsub())
            .await?
            .map_err(WatchError::Connect)?;
        let (mut sink, stream) = pubsub.split();
        command("SUBSCRIBE", sink.subscribe(&self.keys.channel)).await?;
        let mut conn = link.conn.clone();
        let mode = match self.keyspace_patterns(&mut conn).await? {
            Some(patterns) => {
                command("PSUBSCRIBE", sink.psubscribe(patterns)).await?;
                InvalidationMode::KeyspaceEvents
            }
            None => InvalidationMode::TtlOnly,
        };
        self.set_mode(mode);
        Ok(Watch::Resp2 { sink, stream })
    }

    /// The keyspace notification patterns for the list prefixes, if the server sends the
    /// notifications (`notify-keyspace-events` with `K` and key-change events).
    async fn keyspace_patterns(
        &self,
        conn: &mut impl ::redis::aio::ConnectionLike,
    ) -> Result<Option<Vec<String>>, WatchError> {
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("notify-keyspace-events");
        // A flat array in RESP2, a map in RESP3: both read as a map.
        let config = cmd.query_async::<HashMap<String, String>>(conn);
        let flags = match bounded("CONFIG GET", config).await? {
            Ok(reply) => reply
                .get("notify-keyspace-events")
                .cloned()
                .unwrap_or_default(),
            Err(e) if is_connection_error(&e) => return Err(WatchError::command("CONFIG GET")(e)),
            // CONFIG may be disabled (managed Redis): then we cannot know; assume off.
            Err(_) => String::new(),
        };
        let enabled = flags.contains('K')
            && (flags.contains('A')
                || flags.contains('$')
                || flags.contains('g')
                || flags.contains('x'));
        Ok(enabled.then(|| self.keys.keyspace_patterns()))
    }

    fn set_mode(&self, mode: InvalidationMode) {
        self.mode.store(mode.as_u8(), Ordering::Release);
        match mode {
            InvalidationMode::TtlOnly if !self.warned_ttl_only.swap(true, Ordering::Relaxed) => {
                tracing::warn!(
                        server = %self.target,
                        "Redis offers neither client tracking (CLIENT TRACKING, Redis >= 6) nor keyspace notifications (notify-keyspace-events): list values written by other clients can be stale for up to the lookup cache TTL"
                );
            }
            InvalidationMode::KeyspaceEvents => {
                tracing::info!(server = %self.target, "following list keys through keyspace notifications")
            }
            _ => {}
        }
    }

    /// Follows the subscription until a connection fails; returns why.
    async fn follow(&self, watch: &mut Watch) -> WatchError {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let check = tokio::select! {
                event = watch.next() => {
                    match event {
                        Event::Message(msg) => self.on_message(&msg),
                        Event::Invalidate(keys) => self.on_invalidate(keys),
                        Event::Lost(why) => return why,
                        Event::Other => {}
                    }
                    false
                }
                _ = tick.tick() => true,
                _ = self.wake.notified() => true,
            };
            if check {
                if let Err(why) = self.check(watch).await {
                    return why;
                }
            }
        }
    }

    /// Pings both connections; clears a degraded state that a failed command set meanwhile.
    async fn check(&self, watch: &mut Watch) -> Result<(), WatchError> {
        command("PING on the subscription", watch.ping()).await?;
        self.ping().await.map_err(WatchError::Ping)?;
        self.health.mark_recovered();
        Ok(())
    }

    fn on_message(&self, msg: &Msg) {
        let channel = msg.get_channel_name();
        if channel == self.keys.channel {
            match serde_json::from_slice::<Notice>(msg.get_payload_bytes()) {
                Ok(Notice {
                    revision: Some(revision),
                    ..
                }) => self.send(Change::Policy { revision }),
                Ok(Notice {
                    list: Some(list), ..
                }) => self.send(Change::List { list }),
                _ => tracing::debug!(
                    payload = %String::from_utf8_lossy(msg.get_payload_bytes()),
                    "ignoring an unknown message on the changes channel"
                ),
            }
        } else if let Some(key) = channel.strip_prefix(self.keys.keyspace_prefix.as_str()) {
            self.on_key(key);
        }
    }

    /// A tracking invalidation: the keys that changed, or nil when the server flushed everything.
    fn on_invalidate(&self, keys: Value) {
        match keys {
            Value::Array(keys) | Value::Set(keys) => {
                for key in keys {
                    match key {
                        Value::BulkString(key) => self.on_key(&String::from_utf8_lossy(&key)),
                        Value::SimpleString(key) => self.on_key(&key),
                        _ => self.send(Change::Reset),
                    }
                }
            }
            Value::BulkString(key) => self.on_key(&String::from_utf8_lossy(&key)),
            _ => self.send(Change::Reset),
        }
    }

    fn on_key(&self, redis_key: &str) {
        for (list, key) in self.keys.owners(redis_key) {
            self.send(Change::Key { list, key });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redis::ErrorKind;

    fn refused() -> RedisError {
        RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ))
    }

    #[test]
    fn messages_name_the_step_and_keep_the_cause() {
        let cases: Vec<(WatchError, &str, &str)> = vec![
            (
                WatchError::Timeout {
                    step: "SUBSCRIBE",
                    after: Duration::from_millis(250),
                },
                "SUBSCRIBE: no answer within 250ms",
                "SUBSCRIBE: no answer within 250ms",
            ),
            (
                WatchError::Connect(refused()),
                "cannot open the subscription connection",
                "cannot open the subscription connection: Connection refused (os error 111)",
            ),
            (
                WatchError::Command {
                    command: "CLIENT TRACKING",
                    source: RedisError::from((ErrorKind::Client, "no can do")),
                },
                "CLIENT TRACKING failed",
                "CLIENT TRACKING failed: no can do - Client",
            ),
            (
                WatchError::Ping(refused()),
                "the command connection does not answer PING",
                "the command connection does not answer PING: Connection refused (os error 111)",
            ),
            (
                WatchError::Closed("pub/sub"),
                "the pub/sub connection closed",
                "the pub/sub connection closed",
            ),
        ];
        for (error, message, chain) in cases {
            assert_eq!(error.to_string(), message);
            // The OS error shows once, although redis' error both prints and returns it.
            assert_eq!(ErrorChain(&error).to_string(), chain);
            let has_source = std::error::Error::source(&error).is_some();
            assert_eq!(has_source, message != chain, "{error:?}");
        }
    }
}
