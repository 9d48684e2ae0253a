//! Which servers of an upstream are in service: active health checks, passive ejection, and the
//! one place where their changes of state are logged.
//!
//! A server is **in service** while its active checks pass (or it has none) and it is not
//! ejected. The request path asks this with two relaxed atomic loads per server
//! ([`ServerHealth::in_service`]); everything else here runs when something changes.
//!
//! - **Active checks** (`health = { ... }` on an upstream, [`HealthCheck`]): every `interval`, a
//!   `GET path` to each server (the `probe` module), spoken as the upstream's requests are
//!   (TLS with its verification, HTTP/1.1 or HTTP/2: its transport). `unhealthy` failed checks in a row take a
//!   server out of service, `healthy` passed checks in a row bring it back. The first result of a
//!   server decides at once: [`crate::app`] runs one round of checks before the traffic
//!   listeners open, and a reload runs one for the upstreams it adds before they are used, so
//!   that a server that is down from the start never gets a request.
//! - **Passive ejection** ([`PassiveHealth`], on by default): `failures` answers in a row that
//!   failed (5xx, a connect that failed, a connection that died before the answer) eject a server
//!   for `ejection`; each ejection that follows within `max_ejection` of the end of the previous
//!   one lasts twice as long, up to `max_ejection`. After an ejection the server gets requests
//!   again, on probation: its first failure ejects it again at once, its first success ends the
//!   probation. At most half of an upstream's servers are ejected at a time, and never the last
//!   one in service: passive ejection alone never leaves an upstream without a server.
//! - **State, not noise**: each server logs one line when it goes down (a failed connect, its
//!   checks, an ejection: whichever comes first) and one when it is back up; each upstream logs
//!   one line when no server of it is in service any more (its versions' requests go to their
//!   stable version) and one when one is again.
//!
//! The state machines ([`ActiveState`], [`Ejections`]) are plain values, tested without I/O; the
//! clock is a number of milliseconds handed in ([`now_ms`] in production).

mod probe;

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::upstream_protocol::Transport;

pub use probe::ProbeError;

/// Default of [`HealthCheck::path`].
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";

/// Active health checks of an upstream's servers (`health = { ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is requested (`GET`), with its query if any. Default [`DEFAULT_HEALTH_PATH`].
    pub path: String,
    /// From the start of one round of checks to the start of the next. Default 2 s.
    pub interval: Duration,
    /// Bound of one check, from the connect to the response headers; a check that takes longer
    /// failed. At most `interval`. Default 1 s.
    pub timeout: Duration,
    /// Passed checks in a row that bring a server that is down back into service. Default 2.
    pub healthy: u32,
    /// Failed checks in a row that take a server out of service. Default 3.
    pub unhealthy: u32,
    /// The response statuses that pass. Default `[200]`.
    pub statuses: Vec<u16>,
    /// The `Host` header of a check; `None`: the server's address (`host:port`).
    pub host: Option<String>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: DEFAULT_HEALTH_PATH.to_string(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
            statuses: vec![200],
            host: None,
        }
    }
}

/// Passive ejection of an upstream's servers, from the answers of real requests
/// (`passive = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failed answers in a row (5xx, a failed connect, a connection that died before the
    /// answer) that eject a server; 0 turns passive ejection off. Default 5.
    pub failures: u32,
    /// How long a first ejection lasts. Default 10 s.
    pub ejection: Duration,
    /// The longest ejection: each ejection within this time of the end of the previous one
    /// lasts twice as long as that one, up to this. Default 5 min.
    pub max_ejection: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            failures: 5,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// A health setting that cannot work. [`HealthConfigError::field`] names it, below the upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthConfigError {
    /// A check path that is not an origin-form path.
    #[error("`{path}` is not a path: write it as requested, starting with `/`")]
    Path { path: String },
    /// A duration of zero.
    #[error("must be longer than zero")]
    Zero { field: &'static str },
    /// A check that could outlast the interval would overlap the next round.
    #[error("{timeout} is longer than the interval ({interval}): a check must end before the next one starts")]
    TimeoutOverInterval { timeout: String, interval: String },
    /// `healthy` or `unhealthy` at 0.
    #[error("must be at least 1")]
    Threshold { field: &'static str },
    /// `statuses = []`: no check could ever pass.
    #[error("needs at least one status, like [200]")]
    NoStatuses,
    /// A status outside 100..=599.
    #[error("`{status}` is not an HTTP status (100 to 599)")]
    Status { index: usize, status: u16 },
    /// A `host` that cannot be a header value.
    #[error("`{host}` cannot be a Host header")]
    Host { host: String },
    /// `max_ejection` shorter than `ejection`.
    #[error("{max} is shorter than `ejection` ({ejection})")]
    MaxEjection { max: String, ejection: String },
}

impl HealthConfigError {
    /// The field below the upstream: `health.interval`, `health.statuses[1]`, `passive.ejection`.
    pub fn field(&self) -> String {
        match self {
            HealthConfigError::Path { .. } => "health.path".into(),
            HealthConfigError::Zero { field } | HealthConfigError::Threshold { field } => {
                (*field).to_string()
            }
            HealthConfigError::TimeoutOverInterval { .. } => "health.timeout".into(),
            HealthConfigError::NoStatuses => "health.statuses".into(),
            HealthConfigError::Status { index, .. } => format!("health.statuses[{index}]"),
            HealthConfigError::Host { .. } => "health.host".into(),
            HealthConfigError::MaxEjection { .. } => "passive.max_ejection".into(),
        }
    }
}

fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl HealthCheck {
    /// Checks that the settings can work; the first mistake found.
    pub fn check(&self) -> Result<(), HealthConfigError> {
        if !self.path.starts_with('/') || self.path.parse::<http::Uri>().is_err() {
            return Err(HealthConfigError::Path {
                path: self.path.clone(),
            });
        }
        if self.interval.is_zero() {
            return Err(HealthConfigError::Zero {
                field: "health.interval",
            });
        }
        if self.timeout.is_zero() {
            return Err(HealthConfigError::Zero {
                field: "health.timeout",
            });
        }
        if self.timeout > self.interval {
            return Err(HealthConfigError::TimeoutOverInterval {
                timeout: text(self.timeout),
                interval: text(self.interval),
            });
        }
        if self.healthy == 0 {
            return Err(HealthConfigError::Threshold {
                field: "health.healthy",
            });
        }
        if self.unhealthy == 0 {
            return Err(HealthConfigError::Threshold {
                field: "health.unhealthy",
            });
        }
        if self.statuses.is_empty() {
            return Err(HealthConfigError::NoStatuses);
        }
        if let Some((index, &status)) = self
            .statuses
            .iter()
            .enumerate()
            .find(|(_, s)| !(100..=599).contains(*s))
        {
            return Err(HealthConfigError::Status { index, status });
        }
        if let Some(host) = &self.host {
            if host.is_empty() || http::HeaderValue::from_str(host).is_err() {
                return Err(HealthConfigError::Host { host: host.clone() });
            }
        }
        Ok(())
    }
}

impl PassiveHealth {
    /// Checks that the settings can work (with `failures = 0` the durations are not used).
    pub fn check(&self) -> Result<(), HealthConfigError> {
        if self.failures == 0 {
            return Ok(());
        }
        if self.ejection.is_zero() {
            return Err(HealthConfigError::Zero {
                field: "passive.ejection",
            });
        }
        if self.max_ejection < self.ejection {
            return Err(HealthConfigError::MaxEjection {
                max: text(self.max_ejection),
                ejection: text(self.ejection),
            });
        }
        Ok(())
    }
}

/// Milliseconds on the process's monotonic clock: what ejection times are kept in. One clock for
/// every upstream table, so that a server's state means the same after a reload.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Starts at 1, so that 0 can mean "never" (not ejected).
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The active checks of one server, as a state machine: check results in, changes of state out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveState {
    /// `None` until the first result, which decides at once.
    up: Option<bool>,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

impl ActiveState {
    /// Records one check. `Some(up)` when the server's state is decided by it: the first result
    /// always, then `unhealthy` failures in a row (while up) or `healthy` passes in a row (while
    /// down).
    pub fn record(&mut self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        match self.up {
            None => {
                *self = ActiveState {
                    up: Some(passed),
                    streak: 0,
                };
                Some(passed)
            }
            Some(up) if up == passed => {
                self.streak = 0;
                None
            }
            Some(up) => {
                self.streak += 1;
                let needed = if up { unhealthy } else { healthy };
                if self.streak >= needed.max(1) {
                    *self = ActiveState {
                        up: Some(passed),
                        streak: 0,
                    };
                    Some(passed)
                } else {
                    None
                }
            }
        }
    }
}

/// The ejections of one server in a row, as a state machine: how long the next one lasts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejections {
    /// Ejections in a row (each within `max_ejection` of the end of the previous one).
    in_a_row: u32,
    /// When the last one ended (or ends), ms.
    last_until_ms: u64,
}

impl Ejections {
    /// An ejection at `now_ms`: until when it lasts. The first lasts `ejection`; one that starts
    /// within `max_ejection` of the end of the previous one lasts twice as long as that one, up
    /// to `max_ejection`.
    pub fn eject(&mut self, now_ms: u64, cfg: &PassiveHealth) -> u64 {
        let max = cfg.max_ejection.as_millis() as u64;
        let recent = self.in_a_row > 0 && now_ms < self.last_until_ms.saturating_add(max);
        self.in_a_row = if recent { self.in_a_row + 1 } else { 1 };
        let base = cfg.ejection.as_millis() as u64;
        let doublings = (self.in_a_row - 1).min(32);
        let length = base.saturating_mul(1u64 << doublings).min(max.max(base));
        self.last_until_ms = now_ms + length;
        self.last_until_ms
    }
}

/// Why a server is out of service, and since when: for the status, written on changes only.
#[derive(Debug, Clone)]
struct Note {
    reason: String,
    since: SystemTime,
}

/// One server's health. Shared (`Arc`) between the upstream table that sends to it and the
/// upstream's prober; kept across a reload that keeps the server's address.
pub(super) struct ServerHealth {
    /// `host:port`, for checks and log lines.
    addr: Arc<str>,
    /// False once its active checks failed (`unhealthy` in a row), true again after they pass
    /// (`healthy` in a row); always true without active checks. Read on the request path.
    active_up: AtomicBool,
    /// The active checks' state machine; only the prober touches it.
    active: Mutex<ActiveState>,
    /// Failed answers in a row (passive).
    failures: AtomicU32,
    /// Ejected until this time (ms of [`now_ms`]); 0: never ejected. Read on the request path.
    ejected_until_ms: AtomicU64,
    /// Ejected before and no success since: the next failure ejects it again at once.
    probation: AtomicBool,
    /// The ejections' state machine (taken under the upstream's ejection lock).
    ejections: Mutex<Ejections>,
    /// Ejections since start, for the metrics.
    ejected_total: AtomicU64,
    /// True from the line that said it is down to the line that says it is back up: each change
    /// is logged once.
    reported_down: AtomicBool,
    /// When a failure last said it is down (ms of [`now_ms`]): a connect that started before
    /// then and succeeded after it is older news and does not bring the server back up.
    down_at_ms: AtomicU64,
    /// Why it is down (for the status); `None` while up.
    note: Mutex<Option<Note>>,
}

impl ServerHealth {
    fn new(addr: &Arc<str>) -> Self {
        ServerHealth {
            addr: addr.clone(),
            active_up: AtomicBool::new(true),
            active: Mutex::new(ActiveState::default()),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            probation: AtomicBool::new(false),
            ejections: Mutex::new(Ejections::default()),
            ejected_total: AtomicU64::new(0),
            reported_down: AtomicBool::new(false),
            down_at_ms: AtomicU64::new(0),
            note: Mutex::new(None),
        }
    }

    /// Whether requests may go to it at `now_ms`: its checks pass and it is not ejected. The
    /// request path's question: two relaxed loads.
    pub(super) fn in_service(&self, now_ms: u64) -> bool {
        self.active_up.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }
}

/// Where one server stands, for the status and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    /// `host:port`.
    pub addr: String,
    /// Its weight in the upstream (0: drained, never in service).
    pub weight: u32,
    /// In service, down (its checks fail) or ejected.
    pub state: ServerState,
    /// Why it is not in service (the last failed check, the failures that ejected it).
    pub reason: Option<String>,
    /// Since when it is down, when it is.
    pub since: Option<SystemTime>,
    /// Until when an ejected server stays out.
    pub until: Option<SystemTime>,
    /// Ejections since start.
    pub ejections: u64,
}

/// A server's state, as the status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Requests go to it.
    Up,
    /// Its active checks fail: no request goes to it (but, for a stable upstream with no server
    /// in service, as a last resort).
    Down,
    /// Ejected by passive health for a while.
    Ejected,
    /// Weight 0: never used.
    Drained,
}

impl ServerState {
    /// `up`, `down`, `ejected`, `drained`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Ejected => "ejected",
            ServerState::Drained => "drained",
        }
    }
}

/// The health of one upstream's servers: what the table sends by, and what its prober writes.
pub(super) struct UpstreamHealth {
    /// The upstream's name, for log lines.
    name: Arc<str>,
    /// Its servers, in the table's order, with their weights (0: drained, left out of every
    /// count).
    servers: Vec<(Arc<ServerHealth>, u32)>,
    /// Active checks; `None`: none.
    check: Option<HealthCheck>,
    passive: PassiveHealth,
    /// Taken to decide an ejection, so that two at once cannot eject past the limits.
    eject_lock: Mutex<()>,
    /// True while no server is in service (as last logged).
    none_in_service: AtomicBool,
    /// The prober, once started; aborted by [`UpstreamHealth::stop`].
    prober: Mutex<Option<JoinHandle<()>>>,
    /// Set once checks were started (first round run, prober spawned).
    started: AtomicBool,
    /// How the checks speak to the servers: as the upstream's requests do (TLS, HTTP/2).
    transport: Transport,
}

impl UpstreamHealth {
    /// The health of `servers` (address, weight), reusing the state of the servers `before`
    /// had too (the same upstream in the table being replaced).
    pub(super) fn new(
        name: &Arc<str>,
        servers: &[(Arc<str>, u32)],
        check: Option<HealthCheck>,
        passive: PassiveHealth,
        before: Option<&UpstreamHealth>,
    ) -> Self {
        // Kept only while active checks stay on (or off): a server's active state means nothing
        // to an upstream without checks, and a plan that is not installed must not change the
        // running upstream's servers.
        let before = before.filter(|b| b.check.is_some() == check.is_some());
        let servers = servers
            .iter()
            .map(|(addr, weight)| {
                let kept = before.and_then(|b| {
                    b.servers
                        .iter()
                        .find(|(s, _)| s.addr == *addr)
                        .map(|(s, _)| s.clone())
                });
                (
                    kept.unwrap_or_else(|| Arc::new(ServerHealth::new(addr))),
                    *weight,
                )
            })
            .collect();
        let health = UpstreamHealth {
            name: name.clone(),
            servers,
            check,
            passive,
            eject_lock: Mutex::new(()),
            none_in_service: AtomicBool::new(false),
            prober: Mutex::new(None),
            started: AtomicBool::new(false),
            transport: Transport::default(),
        };
        let none = health.weighted().next().is_some() && !health.any_in_service(now_ms());
        health.none_in_service.store(none, Ordering::Relaxed);
        health
    }

    /// The checks speak `transport` (the upstream's) instead of plain HTTP/1.1.
    pub(super) fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The servers that are used (weight above 0).
    fn weighted(&self) -> impl Iterator<Item = &Arc<ServerHealth>> {
        self.servers.iter().filter(|(_, w)| *w > 0).map(|(s, _)| s)
    }

    /// The health of server `i` (in the table's order).
    pub(super) fn server(&self, i: usize) -> &Arc<ServerHealth> {
        &self.servers[i].0
    }

    /// True when at least one server with a weight is in service at `now_ms`.
    pub(super) fn any_in_service(&self, now_ms: u64) -> bool {
        self.weighted().any(|s| s.in_service(now_ms))
    }

    /// An answer came from `server`, `took` after its request went out: a 5xx is a failure,
    /// anything else a success.
    pub(super) fn answered(&self, server: &ServerHealth, status: http::StatusCode, took: Duration) {
        if status.is_server_error() {
            self.failed(server, &format_args!("answered {}", status.as_u16()));
        } else {
            self.succeeded(server, took);
        }
    }

    /// A request to `server` got its answer, `took` after it went out. On the request path: a
    /// load or two while nothing changes.
    pub(super) fn succeeded(&self, server: &ServerHealth, took: Duration) {
        self.succeeded_with(server, took, now_ms);
    }

    /// [`UpstreamHealth::succeeded`] with the clock read only when it is needed. An answer to a
    /// request that went out before a failure said the server is down (on a connection opened
    /// before it died) does not bring it back up: only one sent after that does.
    fn succeeded_with(&self, server: &ServerHealth, took: Duration, now_ms: impl FnOnce() -> u64) {
        if server.failures.load(Ordering::Relaxed) != 0 {
            server.failures.store(0, Ordering::Relaxed);
        }
        if server.probation.load(Ordering::Relaxed) {
            server.probation.store(false, Ordering::Relaxed);
        }
        if server.reported_down.load(Ordering::Relaxed) {
            let now = now_ms();
            let sent_ms = now.saturating_sub(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
            if sent_ms > server.down_at_ms.load(Ordering::Relaxed) {
                self.report_up(server, now);
            }
        }
    }

    /// A request to `server` failed (`why`): counted; `failures` in a row (or one on probation)
    /// eject it, within the limits.
    pub(super) fn failed(&self, server: &ServerHealth, why: &dyn Display) {
        self.failed_at(server, why, now_ms());
    }

    fn failed_at(&self, server: &ServerHealth, why: &dyn Display, now_ms: u64) {
        if self.passive.failures == 0 {
            return;
        }
        let n = server.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.passive.failures || server.probation.load(Ordering::Relaxed) {
            self.eject(server, n, why, now_ms);
        }
    }

    /// Ejects `server` after `n` failures in a row, unless that would eject more than half of
    /// the servers or the last one in service.
    fn eject(&self, server: &ServerHealth, n: u32, why: &dyn Display, now_ms: u64) {
        let until = {
            let _decide = lock(&self.eject_lock);
            if server.ejected(now_ms) {
                return;
            }
            // Counted again from zero either way: a server that may not be ejected is looked at
            // again after `failures` more, not on every failure.
            server.failures.store(0, Ordering::Relaxed);
            if !self.may_eject(server, now_ms) {
                // Nor on probation: its next failures are counted from zero, not each one a
                // trip through this lock.
                server.probation.store(false, Ordering::Relaxed);
                debug!(upstream = %self.name, server = %server.addr, failures = n,
                    "not ejected: at most half of an upstream's servers are ejected, and never the last one in service");
                return;
            }
            let until = lock(&server.ejections).eject(now_ms, &self.passive);
            server.ejected_until_ms.store(until, Ordering::Relaxed);
            server.probation.store(true, Ordering::Relaxed);
            server.ejected_total.fetch_add(1, Ordering::Relaxed);
            until
        };
        let length = Duration::from_millis(until - now_ms);
        let reason = if n >= self.passive.failures {
            let failures = if n == 1 {
                "1 failure".to_string()
            } else {
                format!("{n} failures in a row")
            };
            format!("ejected for {}: {failures}, the last: {why}", text(length))
        } else {
            format!(
                "ejected again for {}: it failed after its last ejection: {why}",
                text(length)
            )
        };
        self.report_down(server, reason, now_ms);
    }

    /// The limits of passive ejection: at most half of the servers (with a weight) ejected at
    /// once, and another server in service.
    fn may_eject(&self, server: &ServerHealth, now_ms: u64) -> bool {
        let servers: Vec<&Arc<ServerHealth>> = self.weighted().collect();
        let ejected = servers.iter().filter(|s| s.ejected(now_ms)).count();
        let others_in_service = servers
            .iter()
            .filter(|s| !std::ptr::eq(Arc::as_ptr(s), server) && s.in_service(now_ms))
            .count();
        (ejected + 1) * 2 <= servers.len() && others_in_service > 0
    }

    /// A connect to `server` failed: the server is down from the operator's point of view (it is
    /// still tried, after the others, until its checks or ejection take it out of service).
    pub(super) fn connect_failed(&self, server: &ServerHealth, error: &dyn Display) {
        self.report_down(server, format!("connect failed: {error}"), now_ms());
    }

    /// A connect to `server` succeeded.
    /// A connect to `server` that started at `started_ms` succeeded: the server is back up,
    /// unless a failure said it is down after that connect started (two connects in flight as
    /// the server died: the late success of the earlier one is not a recovery).
    pub(super) fn connected(&self, server: &ServerHealth, started_ms: u64) {
        if server.reported_down.load(Ordering::Relaxed)
            && started_ms > server.down_at_ms.load(Ordering::Relaxed)
        {
            self.report_up(server, now_ms());
        }
    }

    /// Records the result of one active check of `server`.
    fn checked(&self, server: &ServerHealth, result: Result<(), ProbeError>, now_ms: u64) {
        let Some(check) = &self.check else { return };
        // Out of file descriptors is graygate's own state, not the server's: no result.
        if let Err(ProbeError::Connect(e)) = &result {
            if super::listen::is_fd_limit(e) {
                debug!(upstream = %self.name, server = %server.addr, error = %e, "health check not made: no file descriptor left");
                return;
            }
        }
        let (decided, first) = {
            let mut active = lock(&server.active);
            let first = *active == ActiveState::default();
            (
                active.record(result.is_ok(), check.healthy, check.unhealthy),
                first,
            )
        };
        match (decided, result) {
            (Some(false), Err(e)) => {
                server.active_up.store(false, Ordering::Relaxed);
                let failed = if first {
                    // The first result decides at once.
                    "its first health check failed".to_string()
                } else {
                    format!("{} health checks failed in a row", check.unhealthy)
                };
                let reason = format!("{failed}: GET {}: {e}", check.path);
                self.report_down(server, reason, now_ms);
            }
            (Some(true), _) => {
                server.active_up.store(true, Ordering::Relaxed);
                self.report_up(server, now_ms);
            }
            (None, Ok(())) => {
                // A check got through: a failed connect that requests saw is over.
                if server.reported_down.load(Ordering::Relaxed) {
                    self.report_up(server, now_ms);
                }
            }
            (None, Err(e)) => {
                debug!(upstream = %self.name, server = %server.addr, error = %e, "health check failed");
            }
            (Some(false), Ok(())) => {}
        }
    }

    /// Logs that `server` is down, once; keeps `reason` for the status.
    fn report_down(&self, server: &ServerHealth, reason: String, now_ms: u64) {
        server.down_at_ms.fetch_max(now_ms, Ordering::Relaxed);
        {
            let mut note = lock(&server.note);
            let since = note.as_ref().map_or_else(SystemTime::now, |n| n.since);
            *note = Some(Note {
                reason: reason.clone(),
                since,
            });
        }
        if !server.reported_down.swap(true, Ordering::Relaxed) {
            warn!(upstream = %self.name, server = %server.addr, reason = %reason, "upstream server is down");
        } else {
            debug!(upstream = %self.name, server = %server.addr, reason = %reason, "upstream server still down");
        }
        self.update(now_ms);
    }

    /// Logs that `server` is back up, once, if it is in service.
    fn report_up(&self, server: &ServerHealth, now_ms: u64) {
        if !server.in_service(now_ms) {
            return;
        }
        if server.reported_down.swap(false, Ordering::Relaxed) {
            *lock(&server.note) = None;
            info!(upstream = %self.name, server = %server.addr, "upstream server is back up");
            self.update(now_ms);
        }
    }

    /// Logs the upstream's change of state, once: no server in service, or one again.
    fn update(&self, now_ms: u64) {
        if self.weighted().next().is_none() {
            return;
        }
        let none = !self.any_in_service(now_ms);
        if self.none_in_service.load(Ordering::Relaxed) == none {
            return;
        }
        if self.none_in_service.swap(none, Ordering::Relaxed) != none {
            if none {
                warn!(upstream = %self.name, "no server of the upstream is in service: the versions it serves send their requests to their stable version");
            } else {
                info!(upstream = %self.name, "the upstream has a server in service again");
            }
        }
    }

    /// Where each server stands at `now_ms`, in the table's order.
    pub(super) fn statuses(&self, now_ms: u64) -> Vec<ServerStatus> {
        let wall = SystemTime::now();
        self.servers
            .iter()
            .map(|(s, weight)| {
                let note = lock(&s.note).clone();
                let until = s.ejected_until_ms.load(Ordering::Relaxed);
                let state = if *weight == 0 {
                    ServerState::Drained
                } else if !s.active_up.load(Ordering::Relaxed) {
                    ServerState::Down
                } else if until > now_ms {
                    ServerState::Ejected
                } else {
                    ServerState::Up
                };
                let out = state != ServerState::Up && state != ServerState::Drained;
                ServerStatus {
                    addr: s.addr.to_string(),
                    weight: *weight,
                    state,
                    reason: note.as_ref().filter(|_| out).map(|n| n.reason.clone()),
                    since: note.as_ref().filter(|_| out).map(|n| n.since),
                    until: (state == ServerState::Ejected)
                        .then(|| wall + Duration::from_millis(until - now_ms)),
                    ejections: s.ejected_total.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// True when the upstream has active checks.
    pub(super) fn checked_actively(&self) -> bool {
        self.check.is_some()
    }

    /// Starts the active checks, if the upstream has any and they are not started yet: one
    /// round now (each check bounded by its timeout), then a round every interval on a task of
    /// its own, until [`UpstreamHealth::stop`].
    pub(super) async fn start(self: &Arc<Self>) {
        let Some(check) = self.check.clone() else {
            return;
        };
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        probe::round(self, &check).await;
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(check.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is now: that round just ran.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                probe::round(&me, &check).await;
            }
        });
        *lock(&self.prober) = Some(task);
    }

    /// Stops the active checks (a reload removed or replaced the upstream).
    pub(super) fn stop(&self) {
        if let Some(task) = lock(&self.prober).take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for UpstreamHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamHealth")
            .field("name", &self.name)
            .field("check", &self.check)
            .field("passive", &self.passive)
            .finish()
    }
}

/// A lock that a panic elsewhere does not poison for good: the state it guards stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
