//! Listening sockets and taking connections off them, for every listener graygate has (the data
//! plane, TLS, admin, metrics).
//!
//! Why it is its own module: what happens at the listening socket decides how graygate behaves
//! when it is flooded, and that must be the same on every listener.
//! - **Backlog.** [`bind`] makes every listening socket with `SO_REUSEADDR` and the configured
//!   backlog (`listen_backlog`, default 511 as nginx: 128, tokio's, drops the SYNs of a burst of
//!   thousands of new connections, which clients see as connect timeouts).
//! - **One socket per worker.** With several data plane workers, [`bind_each`] binds one
//!   socket per worker on the same address with `SO_REUSEPORT`: the kernel spreads new
//!   connections over their queues, so an accept wakes one worker (see `workers`).
//! - **Connection limits.** Each listener group has a [`ConnectionLimit`] (the data plane, plain
//!   and TLS together; the admin API; the metrics). At the limit, [`accept`] does not call
//!   `accept(2)` until a connection ends: the clients wait in the kernel's backlog instead of
//!   being accepted and closed, and the admin or metrics listener can never take the file
//!   descriptors the data plane needs. A slot is taken only once a connection waits on the
//!   socket ([`Listener`] is polled for readiness, not for a connection): with several workers
//!   sharing one limit, a freed slot goes to a worker whose queue holds a client, never to one
//!   that would sit on it waiting for a client that the kernel queued on another socket.
//! - **Out of file descriptors.** `EMFILE`/`ENFILE` on `accept(2)` repeats until a descriptor is
//!   freed: [`accept`] pauses that listener for [`FD_LIMIT_PAUSE`] instead of spinning, counts it
//!   and logs it once per episode. (On an upstream connect the same error is graygate's, not the
//!   server's: see [`super::UpstreamError::LocalFdLimit`].)
//!
//! Each limit's counters ([`ListenerStats`]) are what the metrics export per listener.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Default listen backlog of every listener, as nginx's on Linux.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 511;
/// Largest `listen_backlog` accepted (the kernel caps it at `net.core.somaxconn` anyway).
pub const MAX_LISTEN_BACKLOG: u32 = 65_535;
/// Largest default of `max_connections`: client connections of the data plane (plain and TLS
/// together). Each may need one upstream connection as well, so it fits an open-file limit of
/// 65536 with room to spare; below about 20,300 the default is smaller ([`data_plane_limit`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of `[admin] max_connections`: operators and `graygate ctl`, not traffic.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default of `[metrics] max_connections`: a few scrapers.
pub const DEFAULT_METRICS_MAX_CONNECTIONS: usize = 16;
/// Largest connection limit accepted on any listener.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// How long a listener stops accepting after `accept(2)` found no file descriptor left.
pub const FD_LIMIT_PAUSE: Duration = Duration::from_millis(100);

/// A listening socket registered with the runtime that serves it. Unlike tokio's
/// `TcpListener` it can be waited on for a connection without accepting it, which [`accept`]
/// needs to take a connection slot only when there is a connection to use it.
#[derive(Debug)]
pub struct Listener(AsyncFd<mio::net::TcpListener>);

impl Listener {
    /// Registers `socket` with the current runtime (made non-blocking first). Must run inside
    /// the tokio runtime that is to serve it.
    pub fn from_std(socket: std::net::TcpListener) -> io::Result<Listener> {
        socket.set_nonblocking(true)?;
        let socket = mio::net::TcpListener::from_std(socket);
        // SAFETY: the `TcpListener` owns its descriptor, keeps it open and returns the same one
        // until it is dropped, and nothing here takes it out of the `AsyncFd` or replaces it.
        let registered =
            unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) };
        Ok(Listener(registered.map_err(|e| e.into_parts().1)?))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

/// Binds a listening socket on `addr` with `SO_REUSEADDR` (a restart does not wait for the old
/// connections' `TIME_WAIT`) and `backlog` (see the module documentation). Must run inside the
/// tokio runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<Listener> {
    Listener::from_std(bind_std(addr, backlog, false)?)
}

/// [`bind`] without a runtime: the socket is non-blocking, for a runtime to take it later (a
/// worker thread's, see `workers`). With `reuse_port`, `SO_REUSEPORT` is set too, so that
/// more sockets can listen on the same address, each with its own queue of connections.
pub fn bind_std(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// `count` listening sockets on `addr`, one per data plane worker: with more than one, each has
/// `SO_REUSEPORT` and the kernel spreads new connections over them (a port 0 in `addr` becomes
/// the port the first one got, for all). One alone is bound as [`bind`] binds it.
///
/// `SO_REUSEPORT` would also let these sockets join sockets already listening on the address
/// with it (another graygate with several workers, left running): the address is checked first
/// with a socket without it, which any listener there refuses (`EADDRINUSE`), so that a
/// forgotten instance is an error at start, not a silent half of the traffic.
pub fn bind_each(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    if count <= 1 {
        return Ok(vec![bind_std(addr, backlog, false)?]);
    }
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let first = bind_std(addr, backlog, true)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    while sockets.len() < count {
        sockets.push(bind_std(bound, backlog, true)?);
    }
    Ok(sockets)
}

/// Sets `SO_REUSEPORT` on `socket` (socket2 has it only behind a feature that would rebuild
/// tokio and everything on it).
fn set_reuse_port(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `len` bytes from `on`, which lives for the call.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `socket` has `SO_REUSEPORT`: more sockets can then be bound beside it (an upgrade's
/// new process with more workers than the old one handed sockets to).
pub fn has_reuse_port(socket: &impl AsRawFd) -> bool {
    socket_option_on(socket.as_raw_fd(), libc::SO_REUSEPORT)
}

/// Whether the yes/no `SOL_SOCKET` option `option` is on for the socket `fd` (false when it
/// cannot be read: `fd` is no socket).
pub fn socket_option_on(fd: std::os::fd::RawFd, option: libc::c_int) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `on`, which lives for the call.
    let done = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    done == 0 && on != 0
}

/// Why `accept(2)` failed, as far as what to do next goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptFailure {
    /// No file descriptor left (`EMFILE`, `ENFILE`): pause, it lasts until one is freed.
    FdLimit,
    /// The connection died in the backlog (reset, aborted) or the call was interrupted: only
    /// that connection is lost, accept the next one at once.
    Connection,
    /// Anything else (out of memory, ...): pause as well, so as not to spin on it.
    Other,
}

impl AcceptFailure {
    /// What kind of failure `e` is.
    pub fn of(e: &io::Error) -> AcceptFailure {
        if is_fd_limit(e) {
            return AcceptFailure::FdLimit;
        }
        match e.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => AcceptFailure::Connection,
            _ => AcceptFailure::Other,
        }
    }

    /// The `reason` label of `graygate_accept_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptFailure::FdLimit => "fd_limit",
            AcceptFailure::Connection => "connection",
            AcceptFailure::Other => "other",
        }
    }

    /// Every kind, for metrics that show each from the start.
    pub const ALL: [AcceptFailure; 3] = [
        AcceptFailure::FdLimit,
        AcceptFailure::Connection,
        AcceptFailure::Other,
    ];
}

/// True when `e` says the process (`EMFILE`) or the system (`ENFILE`) has no file descriptor
/// left: graygate's own condition, not a fault of whatever it was talking to.
pub fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A condition that lasts (a listener at its limit, out of file descriptors), logged when it
/// begins and when it ends rather than every time it is seen.
#[derive(Debug, Default)]
struct Episode(AtomicBool);

impl Episode {
    /// Marks the condition as present: true when it was not already (log the start).
    fn begin(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }

    /// Marks the condition as gone: true when it was present (log the end).
    fn end(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Relaxed)
    }
}

/// The connection limit of one listener group, with its counters. Cheap to clone: every clone
/// is the same limit (the plain and TLS listeners of the data plane share one).
#[derive(Clone)]
pub struct ConnectionLimit(Arc<LimitState>);

struct LimitState {
    /// The `listener` label of the metrics and the name in the log (`data`, `admin`, `metrics`).
    name: &'static str,
    /// The most connections open at once: file descriptors and memory graygate may spend on
    /// this listener.
    max: usize,
    /// One permit per connection that may still be opened.
    slots: Arc<Semaphore>,
    /// Times the limit was reached and accepting stopped until a connection ended.
    limited: AtomicU64,
    /// `accept(2)` failures by [`AcceptFailure`] (in the order of [`AcceptFailure::ALL`]).
    failures: [AtomicU64; 3],
    /// At the limit now: logged once when it is reached, once when accepting resumes.
    at_limit: Episode,
    /// Out of file descriptors now (the same, for `EMFILE`/`ENFILE`).
    fd_exhausted: Episode,
    /// Connections accepted by each data plane worker, so that an operator sees the kernel
    /// spread them (`graygate_worker_connections_total`). Empty for a listener the main
    /// runtime serves alone (admin, metrics).
    by_worker: Box<[AtomicU64]>,
}

/// What a [`ConnectionLimit`] counted, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerStats {
    /// The `listener` label.
    pub listener: &'static str,
    /// The configured limit.
    pub max: usize,
    /// Connections open now.
    pub open: usize,
    /// Times the limit was reached and accepting paused.
    pub limited: u64,
    /// `accept(2)` failures: out of file descriptors, a connection lost in the backlog, other.
    pub fd_limit: u64,
    pub connection: u64,
    pub other: u64,
}

impl ListenerStats {
    /// The failures of one kind.
    pub fn failures(&self, kind: AcceptFailure) -> u64 {
        match kind {
            AcceptFailure::FdLimit => self.fd_limit,
            AcceptFailure::Connection => self.connection,
            AcceptFailure::Other => self.other,
        }
    }
}

impl std::fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("listener", &self.0.name)
            .field("max", &self.0.max)
            .finish()
    }
}

impl ConnectionLimit {
    /// A limit of `max` connections (at least 1) for the listener group `name`.
    pub fn new(name: &'static str, max: usize) -> ConnectionLimit {
        ConnectionLimit::of_workers(name, max, 0)
    }

    /// [`ConnectionLimit::new`] for a listener group served by `workers` data plane workers,
    /// whose accepts are also counted per worker.
    pub fn of_workers(name: &'static str, max: usize, workers: usize) -> ConnectionLimit {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit(Arc::new(LimitState {
            name,
            max,
            slots: Arc::new(Semaphore::new(max)),
            limited: AtomicU64::new(0),
            failures: Default::default(),
            at_limit: Episode::default(),
            fd_exhausted: Episode::default(),
            by_worker: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }))
    }

    /// Connections accepted so far by each worker, in worker order; empty when not counted.
    pub fn accepted_by_worker(&self) -> Vec<u64> {
        self.0
            .by_worker
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// The listener group's name (the metrics' `listener` label).
    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// The configured limit.
    pub fn max(&self) -> usize {
        self.0.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.max - self.0.slots.available_permits()
    }

    /// Its counters now.
    pub fn stats(&self) -> ListenerStats {
        let failures = |kind: AcceptFailure| self.0.failures[kind as usize].load(Ordering::Relaxed);
        ListenerStats {
            listener: self.0.name,
            max: self.0.max,
            open: self.open(),
            limited: self.0.limited.load(Ordering::Relaxed),
            fd_limit: failures(AcceptFailure::FdLimit),
            connection: failures(AcceptFailure::Connection),
            other: failures(AcceptFailure::Other),
        }
    }

    /// A slot for one more connection, if one is free.
    pub(crate) fn try_slot(&self) -> Option<Slot> {
        self.0.slots.try_acquire().ok()?.forget();
        Some(Slot(self.0.slots.clone()))
    }

    /// A slot for one more connection at the limit: waits for a connection to end, counted and
    /// logged once per episode.
    async fn slot_at_limit(&self) -> Slot {
        let state = &self.0;
        if let Some(slot) = self.try_slot() {
            return slot;
        }
        state.limited.fetch_add(1, Ordering::Relaxed);
        if state.at_limit.begin() {
            warn!(
                listener = state.name,
                max_connections = state.max,
                "{} listener: at max_connections ({} open): not accepting until one closes (new clients wait in the listen backlog)",
                state.name,
                state.max
            );
        }
        state
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed")
            .forget();
        if state.at_limit.end() {
            info!(
                listener = state.name,
                "{} listener: below max_connections again, accepting", state.name
            );
        }
        Slot(state.slots.clone())
    }

    /// Counts a failed `accept(2)` and says how long to pause before the next one.
    fn failed(&self, e: &io::Error) -> Option<Duration> {
        let state = &self.0;
        let kind = AcceptFailure::of(e);
        state.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
        match kind {
            AcceptFailure::Connection => {
                debug!(listener = state.name, error = %e, "a connection was lost before it was accepted");
                None
            }
            AcceptFailure::FdLimit => {
                if state.fd_exhausted.begin() {
                    warn!(
                        listener = state.name,
                        error = %e,
                        open = self.open(),
                        "{} listener: out of file descriptors (graygate's own limit, see `ulimit -n` and max_connections): pausing accept until descriptors are freed",
                        state.name
                    );
                }
                Some(FD_LIMIT_PAUSE)
            }
            AcceptFailure::Other => {
                warn!(listener = state.name, error = %e, "accept failed");
                Some(FD_LIMIT_PAUSE)
            }
        }
    }

    /// A connection was accepted (by the worker this runs on): an out-of-descriptors episode is
    /// over.
    fn accepted(&self) {
        let by_worker = &self.0.by_worker;
        if !by_worker.is_empty() {
            by_worker[super::workers::shard(by_worker.len())].fetch_add(1, Ordering::Relaxed);
        }
        if self.0.fd_exhausted.end() {
            info!(
                listener = self.0.name,
                "{} listener: file descriptors available again, accepting", self.0.name
            );
        }
    }
}

/// One connection's place in its listener's [`ConnectionLimit`], given back when dropped: keep
/// it for as long as the connection is open.
///
/// The semaphore's permit itself is let go (`forget`) and its place given back by hand: so a
/// slot is one pointer, not a permit's two words, in every connection's task.
#[derive(Debug)]
pub struct Slot(Arc<Semaphore>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// The next connection on `listener`, within `limit`: waits for a connection to be queued on
/// the socket first, then for a free slot (so that at the limit nothing is accepted and clients
/// wait in the backlog), then accepts it. The order matters when several workers share `limit`:
/// a worker holding a slot while it waits for a client would keep it from the worker whose
/// socket has one. Failures of `accept(2)` are counted and, when they would repeat (out of file
/// descriptors), waited out; this never fails. Cancel-safe: dropping it loses no connection.
pub async fn accept(listener: &Listener, limit: &ConnectionLimit) -> (TcpStream, SocketAddr, Slot) {
    loop {
        let mut ready = match listener.0.readable().await {
            Ok(ready) => ready,
            // Only when the runtime is going away; nothing to accept then.
            Err(e) => {
                limit.failed(&e);
                tokio::time::sleep(FD_LIMIT_PAUSE).await;
                continue;
            }
        };
        let slot = match limit.try_slot() {
            Some(slot) => slot,
            // At the limit, wait for a slot only while a client really waits on this socket:
            // the readiness may be left from the last accept, and a slot taken for nothing
            // would be kept from a worker whose socket has a client.
            None if connection_queued(listener) => limit.slot_at_limit().await,
            None => {
                ready.clear_ready();
                continue;
            }
        };
        let accepted = match ready.try_io(|socket| socket.get_ref().accept()) {
            Ok(accepted) => accepted,
            // Gone meanwhile (another worker sharing the socket took it): the slot is given
            // back, and the readiness was cleared for the next wait.
            Err(_would_block) => continue,
        };
        drop(ready);
        // Non-blocking from `accept4` already.
        match accepted.and_then(|(stream, peer)| Ok((TcpStream::from_std(stream.into())?, peer))) {
            Ok((stream, peer)) => {
                limit.accepted();
                return (stream, peer, slot);
            }
            Err(e) => {
                drop(slot);
                if let Some(pause) = limit.failed(&e) {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Whether a connection waits in `listener`'s queue now, without accepting it.
fn connection_queued(listener: &Listener) -> bool {
    let mut poll = libc::pollfd {
        fd: listener.0.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd it is given, which lives for the call; a
    // timeout of 0 returns at once.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & libc::POLLIN != 0
}

/// Raises this process's soft limit of open files (`RLIMIT_NOFILE`) to its hard limit, as
/// nginx's `worker_rlimit_nofile` does: systemd and most shells start processes at 1024, far
/// below what `max_connections` needs. Returns the limit in force afterwards.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// File descriptors kept for what is not a client connection (the store, log files, the runtime,
/// health checks) when the limit is compared with the connection limits.
const FD_RESERVE: u64 = 64;

/// What to warn about when `fd_limit` (`RLIMIT_NOFILE`) cannot hold the connection limits:
/// every data plane connection may need a second descriptor for its upstream, every admin and
/// metrics connection one. `None`: it fits.
pub fn fd_budget_shortfall(
    max_connections: usize,
    other_listeners: usize,
    fd_limit: u64,
) -> Option<String> {
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(other_listeners as u64)
        .saturating_add(FD_RESERVE);
    (needed > fd_limit).then(|| {
        format!(
            "the open-file limit ({fd_limit}) is below what max_connections = {max_connections} may need ({needed}: a descriptor per client connection, one per upstream connection, the admin and metrics listeners' limits and {FD_RESERVE} spare): raise `ulimit -n` (LimitNOFILE= under systemd) or lower max_connections; when descriptors run out, accepting pauses and upstream connects fail with a local error"
        )
    })
}

/// The data plane's connection limit: `configured` when the operator set one; else as many as
/// `fd_limit` holds ([`fd_budget_shortfall`]: two descriptors per connection, the other
/// listeners' limits, a reserve), at most [`DEFAULT_MAX_CONNECTIONS`] and at least 1. Sized so,
/// graygate's own clients cannot run it out of descriptors: the ones beyond wait in the backlog.
pub fn data_plane_limit(
    configured: Option<usize>,
    other_listeners: usize,
    fd_limit: Option<u64>,
) -> usize {
    if let Some(n) = configured {
        return n;
    }
    let Some(limit) = fd_limit else {
        return DEFAULT_MAX_CONNECTIONS;
    };
    let spare = limit
        .saturating_sub(FD_RESERVE)
        .saturating_sub(other_listeners as u64)
        / 2;
    usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .clamp(1, DEFAULT_MAX_CONNECTIONS)
}

/// Raises the open-file limit ([`raise_fd_limit`]), logs it, and sizes the data plane's
/// connection limit ([`data_plane_limit`]), warning when a configured one does not fit
/// ([`fd_budget_shortfall`]). Called once at start; returns the data plane's limit.
pub fn prepare_fd_limit(configured: Option<usize>, other_listeners: usize) -> usize {
    let fd_limit = match raise_fd_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
            None
        }
    };
    let max = data_plane_limit(configured, other_listeners, fd_limit);
    info!(
        open_files = fd_limit,
        max_connections = max,
        "open-file limit (RLIMIT_NOFILE) {}, data plane max_connections {max}{}",
        fd_limit.map_or_else(|| "unknown".to_string(), |l| l.to_string()),
        if configured.is_some() {
            ""
        } else {
            " (sized for it)"
        }
    );
    if let (Some(n), Some(limit)) = (configured, fd_limit) {
        if let Some(warning) = fd_budget_shortfall(n, other_listeners, limit) {
            warn!("{warning}");
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn fd_exhaustion_is_told_from_a_lost_connection_and_other_failures() {
        let of = |code| AcceptFailure::of(&io::Error::from_raw_os_error(code));
        assert_eq!(of(libc::EMFILE), AcceptFailure::FdLimit);
        assert_eq!(of(libc::ENFILE), AcceptFailure::FdLimit);
        assert_eq!(of(libc::ECONNABORTED), AcceptFailure::Connection);
        assert_eq!(of(libc::EINTR), AcceptFailure::Connection);
        assert_eq!(of(libc::ENOMEM), AcceptFailure::Other);
        assert!(is_fd_limit(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!is_fd_limit(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
        assert!(!is_fd_limit(&io::Error::other("no os error")));
    }

    #[test]
    fn an_episode_is_reported_once_when_it_begins_and_once_when_it_ends() {
        let episode = Episode::default();
        assert!(!episode.end(), "nothing to end before it began");
        assert!(episode.begin());
        assert!(!episode.begin(), "seen again: not a new episode");
        assert!(episode.end());
        assert!(!episode.end());
        assert!(episode.begin(), "a new episode after the end");
    }

    #[test]
    fn failures_are_counted_by_kind_and_only_repeating_ones_pause() {
        let limit = ConnectionLimit::new("data", 4);
        assert_eq!(
            limit.failed(&io::Error::from_raw_os_error(libc::EMFILE)),
            Some(FD_LIMIT_PAUSE)
        );
        assert_eq!(
            limit.failed(&io::Error::from_raw_os_error(libc::ENFILE)),
            Some(FD_LIMIT_PAUSE)
        );
        assert_eq!(
            limit.failed(&io::Error::from_raw_os_error(libc::ECONNABORTED)),
            None
        );
        assert_eq!(
            limit.failed(&io::Error::from_raw_os_error(libc::ENOMEM)),
            Some(FD_LIMIT_PAUSE)
        );
        let stats = limit.stats();
        assert_eq!((stats.fd_limit, stats.connection, stats.other), (2, 1, 1));
        assert_eq!(stats.failures(AcceptFailure::FdLimit), 2);
        assert!(limit.0.fd_exhausted.0.load(Ordering::Relaxed));
        limit.accepted();
        assert!(!limit.0.fd_exhausted.0.load(Ordering::Relaxed));
    }

    #[test]
    fn the_fd_limit_must_hold_two_descriptors_per_client_connection() {
        assert_eq!(fd_budget_shortfall(10_000, 80, 65_536), None);
        assert_eq!(fd_budget_shortfall(100, 80, 1024), None);
        let warning = fd_budget_shortfall(10_000, 80, 1024).expect("too small");
        assert!(
            warning.starts_with(
                "the open-file limit (1024) is below what max_connections = 10000 may need (20144:"
            ),
            "{warning}"
        );
        assert!(fd_budget_shortfall(usize::MAX, usize::MAX, u64::MAX).is_none());
    }

    #[test]
    fn the_default_limit_is_sized_for_the_open_file_limit() {
        // Set: as set, whatever the descriptors.
        assert_eq!(data_plane_limit(Some(50_000), 80, Some(1024)), 50_000);
        // Not set: two descriptors per connection after the reserve and the other listeners.
        assert_eq!(data_plane_limit(None, 80, Some(65_536)), 10_000);
        assert_eq!(data_plane_limit(None, 80, Some(20_000)), 9_928);
        assert_eq!(data_plane_limit(None, 80, Some(1024)), 440);
        assert_eq!(data_plane_limit(None, 80, Some(10)), 1);
        assert_eq!(data_plane_limit(None, 80, None), 10_000);
        // What the default picks always fits.
        for limit in [200, 1024, 4096, 20_000, 20_400] {
            let n = data_plane_limit(None, 80, Some(limit));
            assert_eq!(fd_budget_shortfall(n, 80, limit), None, "{limit}: {n}");
        }
    }

    #[test]
    fn the_soft_fd_limit_is_raised_to_the_hard_one() {
        let limit = raise_fd_limit().unwrap();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(limit, now.rlim_cur);
        assert_eq!(now.rlim_cur, now.rlim_max);
    }

    #[tokio::test]
    async fn binds_with_the_backlog_and_reuse_address() {
        let listener = bind(loopback(), 7).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let socket = socket2::SockRef::from(&listener);
        assert!(socket.reuse_address().unwrap());
        // The address is taken while it listens.
        let e = bind(addr, 7).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // And a client gets through.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _, _slot) = accept(&listener, &ConnectionLimit::new("data", 1)).await;
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn each_worker_gets_a_socket_on_the_same_address_and_the_kernel_spreads_connections() {
        let sockets = bind_each(loopback(), 128, 3).unwrap();
        assert_eq!(sockets.len(), 3);
        let addr = sockets[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        for socket in &sockets {
            assert_eq!(socket.local_addr().unwrap(), addr);
            assert!(has_reuse_port(socket));
        }
        // Each new connection is queued on one socket, by a hash of its addresses: every socket
        // gets some of 64 (the chance that one gets none is below 3 * (2/3)^64).
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut accepted = [0usize; 3];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while accepted.iter().sum::<usize>() < clients.len() && std::time::Instant::now() < deadline
        {
            for (socket, n) in sockets.iter().zip(&mut accepted) {
                while socket.accept().is_ok() {
                    *n += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(accepted.iter().sum::<usize>(), 64, "{accepted:?}");
        assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    }

    #[test]
    fn a_second_group_on_a_taken_address_is_refused() {
        let group = bind_each(loopback(), 16, 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        // Another graygate with workers on the same port would join the group through
        // SO_REUSEPORT and take half of the traffic: refused, like any taken address.
        let e = bind_each(addr, 16, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let e = bind_each(addr, 16, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // One worker binds as before, without SO_REUSEPORT, and holds its address alone.
        let single = bind_each(loopback(), 16, 1).unwrap();
        assert_eq!(single.len(), 1);
        assert!(!has_reuse_port(&single[0]));
        let e = bind_each(single[0].local_addr().unwrap(), 16, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn accepts_are_counted_by_the_worker_that_made_them() {
        let limit = ConnectionLimit::of_workers("data", 8, 2);
        let listener = bind_std(loopback(), 16, false).unwrap();
        let addr = listener.local_addr().unwrap();
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        // Off the workers (the main runtime): the first worker's count.
        let here = Listener::from_std(listener.try_clone().unwrap()).unwrap();
        let (_first, _, _slot) = accept(&here, &limit).await;
        assert_eq!(limit.accepted_by_worker(), vec![1, 0]);
        // Worker 1 accepts the second connection; worker 0 nothing.
        let each = (0..2)
            .map(|index| {
                let listener = listener.try_clone().unwrap();
                let counted = limit.clone();
                move || async move {
                    if index == 1 {
                        let listener = Listener::from_std(listener)?;
                        let (_second, _, _slot) = accept(&listener, &counted).await;
                    }
                    Ok(())
                }
            })
            .collect();
        for worker in super::super::workers::spawn_all(each).unwrap() {
            tokio::time::timeout(Duration::from_secs(10), worker)
                .await
                .expect("the worker accepted")
                .unwrap()
                .unwrap();
        }
        assert_eq!(limit.accepted_by_worker(), vec![1, 1]);
        assert!(ConnectionLimit::new("admin", 8)
            .accepted_by_worker()
            .is_empty());
    }

    #[tokio::test]
    async fn at_the_limit_clients_wait_in_the_backlog_until_a_connection_ends() {
        let listener = bind(loopback(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = ConnectionLimit::new("data", 2);
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (_, _, first) = accept(&listener, &limit).await;
        let (_, _, second) = accept(&listener, &limit).await;
        assert_eq!(limit.open(), 2);
        // The third client connected (the kernel completed its handshake) but is not accepted
        // while both slots are taken. A bounded look, not a wait for something to happen.
        let third = tokio::time::timeout(Duration::from_millis(300), accept(&listener, &limit));
        assert!(third.await.is_err(), "accepted past the limit");
        assert_eq!(limit.stats().limited, 1);
        drop(first);
        let (mut stream, _, _third) =
            tokio::time::timeout(Duration::from_secs(10), accept(&listener, &limit))
                .await
                .expect("accepted once a slot was freed");
        stream.write_all(b"y").await.unwrap();
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"y", "the waiting client is the one accepted");
        assert_eq!(limit.open(), 2);
        drop(second);
        assert_eq!(limit.open(), 1);
        let stats = limit.stats();
        assert_eq!((stats.listener, stats.max, stats.open), ("data", 2, 1));
    }

    #[tokio::test]
    async fn a_shared_limit_is_never_held_by_a_listener_without_a_client() {
        // Two sockets under one limit of 1, each served by its own accept loop, as the workers'
        // sockets (or the plain and TLS listeners) are. `first` is polled first: were a slot
        // taken before a client waits, it would sit on the only one, and a client of `second`
        // would never be accepted while nothing at all is open.
        let limit = ConnectionLimit::new("data", 1);
        let first = bind(loopback(), 16).unwrap();
        let second = bind(loopback(), 16).unwrap();
        let (to_first, to_second) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        for (name, listener) in [("first", first), ("second", second)] {
            let limit = limit.clone();
            let accepted_tx = accepted_tx.clone();
            tokio::spawn(async move {
                loop {
                    let conn = accept(&listener, &limit).await;
                    if accepted_tx.send((name, conn)).is_err() {
                        return;
                    }
                }
            });
        }
        tokio::task::yield_now().await;
        let _y = TcpStream::connect(to_second).await.unwrap();
        let (name, (_, _, y_slot)) = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
            .await
            .expect("a client of the second socket is accepted while nothing is open")
            .unwrap();
        assert_eq!(name, "second");
        assert_eq!(limit.open(), 1);
        // At the limit, a client of the first waits in its backlog; once the slot is freed,
        // it is the one accepted.
        let _x = TcpStream::connect(to_first).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), accepted.recv()).await;
        assert!(waited.is_err(), "accepted past the limit");
        drop(y_slot);
        let (name, (_, _, _x_slot)) =
            tokio::time::timeout(Duration::from_secs(10), accepted.recv())
                .await
                .expect("the waiting client is accepted once the slot is freed")
                .unwrap();
        assert_eq!(name, "first");
        assert_eq!(limit.open(), 1);
    }
}
