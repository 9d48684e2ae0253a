//! Zero-downtime upgrade: a running graygate starts its successor (the binary at its own path,
//! so a newly installed one, with the same arguments), hands it its listening sockets and its
//! embedded store, and stops once the successor serves. It is nginx's binary upgrade, with the
//! store's hand-over added, and it is what SIGUSR2 (and so `systemctl reload`) does.
//!
//! The listening sockets are inherited, not bound again: the kernel's queue of connections not
//! yet accepted belongs to the socket, so no connection is refused or reset in between, and the
//! old process and the new one both accept from it until the old one stops. A data plane
//! address has one socket per worker (`SO_REUSEPORT`): all of them are handed over and all are
//! served by the new process, whatever its number of workers (`proxy::workers::spread`).
//!
//! The two processes speak over a Unix socket pair, one line per message:
//! 1. the successor reads its config, builds its upstreams and certificates, runs its first
//!    health checks and takes its sockets, then asks `release`: everything that can refuse a
//!    start has been done before the store changes hands;
//! 2. the old process refuses admin writes from then on (503 with `Retry-After`), stops its
//!    rollout driver and its policy watcher, closes the embedded store's file, answers
//!    `released`;
//! 3. the successor opens the store, starts serving, and says `ready`;
//! 4. the old process tells systemd the new main PID, stops accepting, lets its connections
//!    finish (an HTTP/1.1 keep-alive connection is closed after its next answer, so that no
//!    client sends a request on a connection being closed), and exits.
//!
//! When the successor fails or says nothing in time, it is killed and the old process takes its
//! store back and goes on serving as before, having logged why.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The listening sockets handed to a successor: `key=fd` pairs separated by `;`, the key being
/// [`listener_key`]'s.
pub const LISTENERS_ENV: &str = "GRAYGATE_UPGRADE_LISTENERS";

/// The successor's end of the control socket, as a file descriptor number.
pub const CONTROL_ENV: &str = "GRAYGATE_UPGRADE_CONTROL";

/// How long a successor may take to get ready to take the store (config, upstreams, first health
/// checks), and then to start serving on it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an upgrade did not happen; the old process goes on serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start the new process {exe}: {source}")]
    Spawn {
        exe: String,
        #[source]
        source: io::Error,
    },
    #[error("the new process exited ({status}) before it was ready; see its log lines above")]
    Exited { status: std::process::ExitStatus },
    #[error("the new process said nothing for {0:?} while {1}")]
    Timeout(Duration, &'static str),
    #[error("the new process sent {0:?}, expected {1:?}")]
    Unexpected(String, &'static str),
    #[error("the old process went away or refused to hand over: {0}")]
    Predecessor(String),
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    #[error("{CONTROL_ENV} or {LISTENERS_ENV} is malformed: {0}")]
    Environment(String),
    #[error("an upgrade is already in progress")]
    InProgress,
}

/// The name a listening socket is handed over under: what it serves and its address as the
/// config writes it (port 0 stays 0), so that the successor finds it from its own config.
pub fn listener_key(kind: &str, configured: std::net::SocketAddr) -> String {
    format!("{kind}@{configured}")
}

/// What a process was handed by the graygate it replaces: listening sockets by key, and the
/// control socket to its predecessor. Empty for a process started the ordinary way.
#[derive(Debug, Default)]
pub struct Inheritance {
    listeners: Mutex<HashMap<String, Vec<OwnedFd>>>,
    control: Mutex<Option<OwnedFd>>,
}

impl Inheritance {
    /// Reads and clears the environment a predecessor set (so that this process's own successor
    /// does not see it). Call it before any thread starts: it changes the environment.
    pub fn from_env() -> Result<Inheritance, UpgradeError> {
        let listeners = std::env::var_os(LISTENERS_ENV);
        let control = std::env::var_os(CONTROL_ENV);
        std::env::remove_var(LISTENERS_ENV);
        std::env::remove_var(CONTROL_ENV);
        let inheritance = Inheritance::default();
        if let Some(listeners) = listeners {
            let text = listeners
                .into_string()
                .map_err(|_| UpgradeError::Environment("not UTF-8".into()))?;
            let mut map: HashMap<String, Vec<OwnedFd>> = HashMap::new();
            for pair in text.split(';').filter(|p| !p.is_empty()) {
                let (key, fd) = pair
                    .rsplit_once('=')
                    .ok_or_else(|| UpgradeError::Environment(format!("`{pair}` has no `=`")))?;
                let fd = adopt_fd(fd)?;
                if !is_listening_socket(fd.as_raw_fd()) {
                    return Err(UpgradeError::Environment(format!(
                        "`{pair}` is not a listening socket"
                    )));
                }
                map.entry(key.to_string()).or_default().push(fd);
            }
            *lock(&inheritance.listeners) = map;
        }
        if let Some(control) = control {
            let text = control
                .into_string()
                .map_err(|_| UpgradeError::Environment("not UTF-8".into()))?;
            *lock(&inheritance.control) = Some(adopt_fd(&text)?);
        }
        Ok(inheritance)
    }

    /// Whether this process was started by an upgrade.
    pub fn is_successor(&self) -> bool {
        lock(&self.control).is_some()
    }

    /// The inherited listening socket with `key`, if there is one (each is taken once).
    pub fn take_listener(&self, key: &str) -> Option<std::net::TcpListener> {
        let mut listeners = lock(&self.listeners);
        let fds = listeners.get_mut(key)?;
        let fd = fds.pop()?;
        if fds.is_empty() {
            listeners.remove(key);
        }
        Some(std::net::TcpListener::from(fd))
    }

    /// Every inherited listening socket with `key`, in the order they were handed (a data plane
    /// address has one per worker of the old process); empty when there is none.
    pub fn take_listeners(&self, key: &str) -> Vec<std::net::TcpListener> {
        let fds = lock(&self.listeners).remove(key).unwrap_or_default();
        fds.into_iter().map(std::net::TcpListener::from).collect()
    }

    /// The control socket to the predecessor, once.
    pub fn predecessor(&self) -> Option<Predecessor> {
        let fd = lock(&self.control).take()?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true).ok()?;
        let stream = UnixStream::from_std(stream).ok()?;
        Some(Predecessor {
            control: BufReader::new(stream),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes ownership of an inherited descriptor named in the environment, and marks it
/// close-on-exec again (it was left open only to cross the exec).
fn adopt_fd(text: &str) -> Result<OwnedFd, UpgradeError> {
    let fd: RawFd = text
        .trim()
        .parse()
        .map_err(|_| UpgradeError::Environment(format!("`{text}` is not a descriptor number")))?;
    // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is not open fails with EBADF.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(UpgradeError::Environment(format!(
            "descriptor {fd} is not open"
        )));
    }
    // SAFETY: the predecessor handed this descriptor to this process alone, and it is taken once
    // (the environment is cleared when read).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(fd, true);
    Ok(owned)
}

fn set_cloexec(fd: RawFd, on: bool) -> bool {
    // SAFETY: fcntl on a descriptor this process owns; only the close-on-exec flag changes.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        libc::fcntl(fd, libc::F_SETFD, flags) == 0
    }
}

fn is_listening_socket(fd: RawFd) -> bool {
    crate::proxy::listen::socket_option_on(fd, libc::SO_ACCEPTCONN)
}

/// The successor's side of the control socket.
pub struct Predecessor {
    control: BufReader<UnixStream>,
}

impl Predecessor {
    /// Asks the old process to let go of the store, and waits until it has.
    pub async fn release_store(&mut self) -> Result<(), UpgradeError> {
        send(self.control.get_mut(), "release").await?;
        match next_message(&mut self.control, "releasing the store").await? {
            Some(line) if line == "released" => Ok(()),
            Some(line) => Err(UpgradeError::Predecessor(line)),
            None => Err(UpgradeError::Predecessor(
                "closed the control socket".into(),
            )),
        }
    }

    /// Tells the old process that this one serves: it stops accepting and exits.
    pub async fn ready(mut self) -> Result<(), UpgradeError> {
        send(
            self.control.get_mut(),
            &format!("ready {}", std::process::id()),
        )
        .await
    }
}

/// The old process's side: the successor it started.
pub struct Successor {
    child: tokio::process::Child,
    control: BufReader<UnixStream>,
}

/// A message from the successor.
#[derive(Debug, PartialEq, Eq)]
pub enum Said {
    /// It is ready to take the store.
    Release,
    /// It serves.
    Ready,
}

impl Successor {
    /// Starts `exe` with `args`, handing it `listeners` (key and descriptor) and a control socket.
    pub fn spawn(
        exe: &Path,
        args: &[OsString],
        listeners: &[(String, RawFd)],
    ) -> Result<Successor, UpgradeError> {
        let spawn_error = |source| UpgradeError::Spawn {
            exe: exe.display().to_string(),
            source,
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_error)?;
        let control_fd = theirs.as_raw_fd();
        let mut handed: Vec<RawFd> = listeners.iter().map(|(_, fd)| *fd).collect();
        handed.push(control_fd);
        let env: String = listeners
            .iter()
            .map(|(key, fd)| format!("{key}={fd};"))
            .collect();
        let mut command = tokio::process::Command::new(exe);
        command
            .args(args)
            .env(LISTENERS_ENV, env)
            .env(CONTROL_ENV, control_fd.to_string())
            .stdin(std::process::Stdio::null());
        // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; it leaves the
        // handed descriptors open across the exec (they are close-on-exec in this process).
        unsafe {
            command.pre_exec(move || {
                for fd in &handed {
                    if !set_cloexec(*fd, false) {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(spawn_error)?;
        drop(theirs);
        ours.set_nonblocking(true).map_err(spawn_error)?;
        let control = UnixStream::from_std(ours).map_err(spawn_error)?;
        Ok(Successor {
            child,
            control: BufReader::new(control),
        })
    }

    /// The successor's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits (at most [`STEP_TIMEOUT`]) for the successor to say `expected`; its exit, its
    /// silence or anything else is an error.
    pub async fn expect(
        &mut self,
        expected: Said,
        doing: &'static str,
    ) -> Result<(), UpgradeError> {
        let wanted = match expected {
            Said::Release => "release",
            Said::Ready => "ready",
        };
        let line = tokio::select! {
            line = next_message(&mut self.control, doing) => line?,
            status = self.child.wait() => return Err(UpgradeError::Exited { status: status? }),
        };
        match line {
            None => {
                // The control socket closed: the process is exiting; report how it ended.
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                match status {
                    Ok(Ok(status)) => Err(UpgradeError::Exited { status }),
                    _ => Err(UpgradeError::Unexpected("end of stream".into(), wanted)),
                }
            }
            Some(line) if line.split(' ').next() == Some(wanted) => Ok(()),
            Some(line) => Err(UpgradeError::Unexpected(line, wanted)),
        }
    }

    /// Tells the successor that the store is released.
    pub async fn released(&mut self) -> Result<(), UpgradeError> {
        send(self.control.get_mut(), "released").await
    }

    /// Ends a successor that failed: killed, and reaped so that no zombie is left.
    pub async fn abandon(mut self) {
        let _ = self.child.kill().await;
    }

    /// Lets the successor run on after this process exits (it is reparented).
    pub fn detach(self) {
        drop(self.control);
        // Dropping a tokio `Child` neither kills nor waits for it.
        drop(self.child);
    }
}

async fn send(stream: &mut UnixStream, message: &str) -> Result<(), UpgradeError> {
    stream.write_all(format!("{message}\n").as_bytes()).await?;
    Ok(())
}

/// The next message from the other process while `doing`, within [`STEP_TIMEOUT`]; `None` at the
/// end of the stream (the other process closed it, or exited).
async fn next_message(
    control: &mut BufReader<UnixStream>,
    doing: &'static str,
) -> Result<Option<String>, UpgradeError> {
    match tokio::time::timeout(STEP_TIMEOUT, read_line(control)).await {
        Err(_) => Err(UpgradeError::Timeout(STEP_TIMEOUT, doing)),
        Ok(line) => Ok(line?),
    }
}

/// One line (without its newline), or `None` at the end of the stream. Bounded: a line longer
/// than a message can be is an error.
async fn read_line(control: &mut BufReader<UnixStream>) -> io::Result<Option<String>> {
    let mut line = String::new();
    let n = tokio::io::AsyncReadExt::take(&mut *control, 256)
        .read_line(&mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end().to_string()))
}

/// Tells the service manager (systemd's `NOTIFY_SOCKET`, when set) how this process is doing:
/// ready once it serves, the new main PID when an upgrade hands over, stopping at shutdown.
pub fn notify_service_manager(state: ServiceState) {
    let states: Vec<sd_notify::NotifyState> = match state {
        ServiceState::Ready => vec![sd_notify::NotifyState::Ready],
        ServiceState::HandedOver(pid) => vec![
            sd_notify::NotifyState::MainPid(pid),
            sd_notify::NotifyState::Ready,
        ],
        ServiceState::Stopping => vec![sd_notify::NotifyState::Stopping],
    };
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// What [`notify_service_manager`] says.
#[derive(Debug, Clone, Copy)]
pub enum ServiceState {
    Ready,
    /// The successor with this PID is the service's main process now.
    HandedOver(u32),
    Stopping,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_listener_and_its_configured_address() {
        assert_eq!(
            listener_key("plain", "127.0.0.1:0".parse().unwrap()),
            "plain@127.0.0.1:0"
        );
        assert_eq!(
            listener_key("tls", "[::1]:8443".parse().unwrap()),
            "tls@[::1]:8443"
        );
    }

    #[test]
    fn a_plain_process_inherits_nothing() {
        let none = Inheritance::default();
        assert!(!none.is_successor());
        assert!(none.take_listener("plain@127.0.0.1:0").is_none());
        assert!(none.take_listeners("plain@127.0.0.1:0").is_empty());
        assert!(none.predecessor().is_none());
    }

    #[test]
    fn only_open_listening_sockets_are_adopted() {
        assert!(matches!(adopt_fd("x"), Err(UpgradeError::Environment(_))));
        // 0-2 are the standard streams, never a handed socket.
        assert!(adopt_fd("1").is_err());
        assert!(adopt_fd("100000").is_err());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_listening_socket(listener.as_raw_fd()));
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!is_listening_socket(client.as_raw_fd()));
    }
}
