//! The gateway under test: a builder over the crate's own config and policy types, which writes
//! the config file with the TOML serializer and starts the real `graygate run` on it.
//!
//! ```ignore
//! let gg = gateway()
//!     .upstream("stable", &stable)
//!     .upstream("canary", &canary)
//!     .service(service("web").stable("stable", "stable").version("canary", "canary"))
//!     .route(route("web"))
//!     .store(&redis)
//!     .start()
//!     .await;
//! ```
//!
//! The process listens on 127.0.0.1 port 0 (the metrics and admin listeners too); the bound
//! addresses are read from the lines it prints at start. [`Gateway`] kills it in `Drop`, even when
//! the test fails, and removes its directory unless the test is failing (to look at afterwards).

use super::ctl::{Admin, Ctl};
use super::eventually::{equals, eventually, patient, Eventually};
use super::{route, service, Client, Reply};
use bytes::Bytes;
use graygate::config::file::{
    AccessLogFile, AdminFile, CacheFile, CertFile, ConfigFile, HealthFile, HistoryFile,
    MetricsFile, PassiveFile, RolloutsFile, StoreFile, TlsFile, TokenFile, UpstreamFile,
};
use graygate::demo::Backend;
use graygate::policy::model::{RouteDoc, ServiceDoc};
use graygate::policy::PolicyDoc;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `graygate` binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_graygate")
}

/// A gateway with the upstreams `stable` and `canary` behind the route `web`, the setting most
/// tests start from; they add the `web` service they need (see [`web`](super::web)).
pub fn web_gateway(stable: impl Address, canary: impl Address) -> GatewayBuilder {
    gateway()
        .upstream("stable", stable)
        .upstream("canary", canary)
        .route(route("web"))
}

/// A gateway with one version, `stable`, of service `web` on `stable`, routed for every request:
/// for tests of what the front door does whatever the policy.
pub fn stable_gateway(stable: impl Address) -> GatewayBuilder {
    gateway()
        .upstream("stable", stable)
        .service(service("web").stable("stable", "stable"))
        .route(route("web"))
}

/// A loopback address where nothing listens (bound, then released): an upstream that is down,
/// or a free port for a server to take.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("a bound address")
}

/// Something with an address an upstream can name: a [`Backend`] or a plain address.
pub trait Address {
    fn address(&self) -> SocketAddr;
}

impl Address for &Backend {
    fn address(&self) -> SocketAddr {
        self.addr()
    }
}

impl Address for SocketAddr {
    fn address(&self) -> SocketAddr {
        *self
    }
}

/// A config being built; see [`gateway`].
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    /// Everything but the policy, as it will be written.
    file: ConfigFile,
    policy: PolicyDoc,
    /// Write the policy to this file (relative to the config) instead of inline.
    policy_file: Option<String>,
    /// Environment variables the process is started with.
    env: Vec<(String, String)>,
    /// `RLIMIT_NOFILE` (soft and hard) the process is started with: a small limit makes running
    /// out of file descriptors a matter of a few hundred connections.
    open_files: Option<u64>,
}

/// A gateway with no upstream, no policy and the embedded store, listening on port 0.
pub fn gateway() -> GatewayBuilder {
    GatewayBuilder {
        file: ConfigFile {
            listen: vec!["127.0.0.1:0".into()],
            ..ConfigFile::default()
        },
        policy: PolicyDoc::default(),
        policy_file: None,
        env: Vec::new(),
        open_files: None,
    }
}

impl GatewayBuilder {
    /// The config without upstream `name`.
    pub fn without_upstream(mut self, name: &str) -> Self {
        self.file.upstreams.retain(|u| u.name != name);
        self
    }

    /// `max_connections`: client connections of the data plane open at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.file.max_connections = Some(n);
        self
    }

    /// `listen_backlog` of every listener.
    pub fn listen_backlog(mut self, n: u32) -> Self {
        self.file.listen_backlog = Some(n);
        self
    }

    /// `[admin] max_connections` (adds `[admin]` on a free port if there is none).
    pub fn admin_max_connections(mut self, n: usize) -> Self {
        self.admin_file().max_connections = Some(n);
        self
    }

    /// `[admin] header_timeout` (adds `[admin]` on a free port if there is none).
    pub fn admin_header_timeout(mut self, timeout: Duration) -> Self {
        self.admin_file().header_timeout = Some(humantime::format_duration(timeout).to_string());
        self
    }

    /// `[admin] session_ttl` (adds `[admin]` on a free port if there is none).
    pub fn admin_session_ttl(mut self, ttl: &str) -> Self {
        self.admin_file().session_ttl = Some(ttl.into());
        self
    }

    fn admin_file(&mut self) -> &mut AdminFile {
        self.file.admin.get_or_insert_with(|| AdminFile {
            listen: Some("127.0.0.1:0".into()),
            ..AdminFile::default()
        })
    }

    /// Starts the process with at most `n` open files (`RLIMIT_NOFILE`, soft and hard, so that
    /// graygate cannot raise it).
    pub fn open_files(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// `[metrics] max_connections` (with `[metrics]` on a free port).
    pub fn metrics_max_connections(mut self, n: usize) -> Self {
        if self.file.metrics.listen.is_none() {
            self = self.metrics();
        }
        self.file.metrics.max_connections = Some(n);
        self
    }

    /// `[timeouts] upstream_response`.
    pub fn upstream_response_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.upstream_response =
            Some(humantime::format_duration(timeout).to_string());
        self
    }

    /// `[timeouts] header`: how long a request head may take to arrive, and a kept-alive
    /// connection may wait for its next one.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.header = Some(humantime::format_duration(timeout).to_string());
        self
    }

    /// `[timeouts] client_body`.
    pub fn client_body_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.client_body = Some(humantime::format_duration(timeout).to_string());
        self
    }

    /// `[timeouts] shutdown`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.shutdown = Some(humantime::format_duration(timeout).to_string());
        self
    }

    /// `[timeouts] upstream_body`.
    pub fn upstream_body_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.upstream_body = Some(humantime::format_duration(timeout).to_string());
        self
    }

    /// The policy as it will be written, to change in place.
    pub fn policy_mut(&mut self) -> &mut PolicyDoc {
        &mut self.policy
    }

    /// An upstream of one server.
    pub fn upstream(mut self, name: &str, server: impl Address) -> Self {
        self.file.upstreams.push(UpstreamFile {
            name: name.into(),
            servers: vec![server.address().to_string()],
            ..UpstreamFile::default()
        });
        self
    }

    /// An upstream of several servers, each of weight 1.
    pub fn upstream_servers(mut self, name: &str, servers: &[SocketAddr]) -> Self {
        self.file.upstreams.push(UpstreamFile {
            name: name.into(),
            servers: servers.iter().map(SocketAddr::to_string).collect(),
            ..UpstreamFile::default()
        });
        self
    }

    /// `health = { ... }` on upstream `name` (added before); `None` removes it.
    pub fn health(mut self, name: &str, health: Option<HealthFile>) -> Self {
        self.upstream_named(name).health = health;
        self
    }

    /// `passive = { ... }` on upstream `name` (added before).
    pub fn passive(mut self, name: &str, passive: PassiveFile) -> Self {
        self.upstream_named(name).passive = Some(passive);
        self
    }

    fn upstream_named(&mut self, name: &str) -> &mut UpstreamFile {
        self.file
            .upstreams
            .iter_mut()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no upstream {name} in the config"))
    }

    /// An upstream written out in full (TLS, protocol).
    pub fn upstream_file(mut self, upstream: UpstreamFile) -> Self {
        self.file.upstreams.push(upstream);
        self
    }

    /// Starts the process with the environment variable `key` set to `value`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A service of the policy.
    pub fn service(mut self, service: impl Into<ServiceDoc>) -> Self {
        self.policy.services.push(service.into());
        self
    }

    /// A route of the policy.
    pub fn route(mut self, route: impl Into<RouteDoc>) -> Self {
        self.policy.routes.push(route.into());
        self
    }

    /// The policy goes to its own file, `policy_file = "<name>"`, instead of inline.
    pub fn policy_file(mut self, name: &str) -> Self {
        self.policy_file = Some(name.into());
        self
    }

    /// `[store]`: a Redis or memcached server, or a hand-made table.
    pub fn store(mut self, store: impl Into<StoreFile>) -> Self {
        self.file.store = store.into();
        self
    }

    /// `[store] lists`: list `list` lives under key prefix `prefix`.
    pub fn list_prefix(mut self, list: &str, prefix: &str) -> Self {
        self.file
            .store
            .lists
            .get_or_insert_with(Default::default)
            .insert(list.into(), prefix.into());
        self
    }

    /// `[store] key_escape`: list `list`'s memcached keys are written as `escape` says (`uri`:
    /// as the original's client escapes them).
    pub fn key_escape(mut self, list: &str, escape: &str) -> Self {
        self.file
            .store
            .key_escape
            .get_or_insert_with(Default::default)
            .insert(list.into(), escape.into());
        self
    }

    /// `[cache] ttl` and `negative_ttl`.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        let ttl = humantime::format_duration(ttl).to_string();
        self.file.cache.ttl = Some(ttl.clone());
        self.file.cache.negative_ttl = Some(ttl);
        self
    }

    /// `[cache]` as it will be written, to change in place (`max_bytes`, `max_key_bytes`...).
    pub fn cache_mut(&mut self) -> &mut CacheFile {
        &mut self.file.cache
    }

    /// `[client_ip] trusted_proxies`.
    pub fn trusted_proxies<const N: usize>(mut self, nets: [&str; N]) -> Self {
        self.file.client_ip.trusted_proxies = nets.iter().map(|n| n.to_string()).collect();
        self
    }

    /// `[client_ip] mode = "original"`: X-Real-IP, else X-Forwarded-For, else the peer.
    pub fn original_client_ip(mut self) -> Self {
        self.file.client_ip.mode = Some("original".into());
        self
    }

    /// `[admin]` on a free loopback port, without tokens.
    pub fn admin(mut self) -> Self {
        self.file.admin = Some(AdminFile {
            listen: Some("127.0.0.1:0".into()),
            ..AdminFile::default()
        });
        self
    }

    /// `[admin]` with a bearer token; [`Gateway::ctl`] and [`Gateway::admin_api`] use it.
    pub fn admin_token(mut self, name: &str, token: &str) -> Self {
        let admin = self.file.admin.get_or_insert_with(|| AdminFile {
            listen: Some("127.0.0.1:0".into()),
            ..AdminFile::default()
        });
        admin.tokens.push(TokenFile {
            name: name.into(),
            token: Some(token.into()),
            token_env: None,
        });
        self
    }

    /// `[admin] listen`.
    pub fn admin_listen(mut self, addr: &str) -> Self {
        self.file
            .admin
            .get_or_insert_with(AdminFile::default)
            .listen = Some(addr.into());
        self
    }

    /// `[metrics]` on a free loopback port.
    pub fn metrics(self) -> Self {
        self.metrics_listen("127.0.0.1:0".parse().expect("an address"))
    }

    /// `[metrics] listen`.
    pub fn metrics_listen(mut self, addr: SocketAddr) -> Self {
        self.file.metrics = MetricsFile {
            listen: Some(addr.to_string()),
            ..self.file.metrics.clone()
        };
        self
    }

    /// `workers`: data plane workers (not set: one per core).
    pub fn workers(mut self, n: usize) -> Self {
        self.file.workers = Some(n);
        self
    }

    /// `listen`: the data plane on this address instead of a free port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.file.listen = vec![addr.to_string()];
        self
    }

    /// `[tls]` on a free loopback port with these certificates, `<stem>.pem` and `<stem>.key`
    /// in the gateway's directory (the first is the default); see [`GatewayBuilder::start_in`].
    pub fn tls(mut self, stems: &[&str]) -> Self {
        self.file.tls = Some(TlsFile {
            listen: vec!["127.0.0.1:0".into()],
            certs: stems
                .iter()
                .map(|stem| CertFile {
                    cert: format!("{stem}.pem"),
                    key: format!("{stem}.key"),
                })
                .collect(),
            ..TlsFile::default()
        });
        self
    }

    /// `[tls]` as it will be written, to change in place (after [`GatewayBuilder::tls`]).
    pub fn tls_mut(&mut self) -> &mut TlsFile {
        self.file.tls.as_mut().expect("call .tls(..) first")
    }

    /// `[tls] redirect_http = true`.
    pub fn redirect_http(mut self) -> Self {
        self.tls_mut().redirect_http = true;
        self
    }

    /// `[tls] watch_interval`.
    pub fn tls_watch_interval(mut self, every: Duration) -> Self {
        self.tls_mut().watch_interval = Some(humantime::format_duration(every).to_string());
        self
    }

    /// `listen = []`: TLS listeners only.
    pub fn no_plain_listener(mut self) -> Self {
        self.file.listen.clear();
        self
    }

    /// `[log] format`: `text` or `json`.
    pub fn log_format(mut self, format: &str) -> Self {
        self.file.log.format = Some(format.into());
        self
    }

    /// `[access_log]`: `format` (`text`, `json`) to `path` (`None`: stdout).
    pub fn access_log(mut self, format: &str, path: Option<&str>) -> Self {
        self.file.access_log = AccessLogFile {
            format: Some(format.into()),
            path: path.map(str::to_string),
        };
        self
    }

    /// `version_header`.
    pub fn version_header(mut self, name: &str) -> Self {
        self.file.version_header = Some(name.into());
        self
    }

    /// `response_version_header = true`.
    pub fn response_version_header(mut self) -> Self {
        self.file.response_version_header = true;
        self
    }

    /// `[rollouts] tick` and `lease`: how often the rollout driver looks, and how long its
    /// store lease lasts (tests use a fraction of the defaults so that a plan runs in seconds).
    pub fn rollouts(mut self, tick: Duration, lease: Duration) -> Self {
        let text = |d: Duration| humantime::format_duration(d).to_string();
        self.file.rollouts = RolloutsFile {
            tick: Some(text(tick)),
            lease: Some(text(lease)),
        };
        self
    }

    /// `[history] keep` and `max_bytes` (`"64KiB"`): how much policy history the store keeps.
    pub fn history(mut self, keep: usize, max_bytes: &str) -> Self {
        self.file.history = HistoryFile {
            keep: Some(keep),
            max_bytes: Some(max_bytes.into()),
        };
        self
    }

    /// `[fleet] heartbeat` and `on_store_behind` (`"reseed"` or `"refuse"`).
    pub fn fleet(mut self, heartbeat: Duration, on_store_behind: &str) -> Self {
        self.file.fleet.heartbeat = Some(humantime::format_duration(heartbeat).to_string());
        self.file.fleet.on_store_behind = Some(on_store_behind.into());
        self
    }

    /// `[fleet] snapshot`: the snapshot file (`""`: none).
    pub fn snapshot(mut self, path: &str) -> Self {
        self.file.fleet.snapshot = Some(path.into());
        self
    }

    /// The token the admin API is called with, if any.
    fn token(&self) -> Option<String> {
        let admin = self.file.admin.as_ref()?;
        admin.tokens.first()?.token.clone()
    }

    /// Writes the config (and the policy file, if any) into `dir`; returns the config's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let mut file = self.file.clone();
        let has_policy = !self.policy.routes.is_empty() || !self.policy.services.is_empty();
        match &self.policy_file {
            Some(name) => {
                let text = toml::to_string(&self.policy).expect("the policy serializes");
                std::fs::write(dir.join(name), text).expect("write the policy file");
                file.policy_file = Some(name.clone());
            }
            None if has_policy => file.policy = Some(self.policy.clone()),
            None => {}
        }
        let text = toml::to_string(&file).expect("the config serializes");
        let path = dir.join("graygate.toml");
        std::fs::write(&path, text).expect("write the config");
        path
    }

    /// Starts `graygate run` in a new temporary directory.
    pub async fn start(self) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("graygate-e2e")
            .tempdir()
            .expect("a temp dir")
            .keep();
        self.start_in(dir).await
    }

    /// Starts `graygate run` in `dir` (a stopped gateway's, or one with files the config names:
    /// certificates), which the gateway owns from then on (removed when it is dropped).
    pub async fn start_in(self, dir: PathBuf) -> Gateway {
        let path = self.write(&dir);
        let mut command = Command::new(binary());
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("GRAYGATE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = self.open_files {
            limit_open_files(&mut command, n);
        }
        let mut child = command.spawn().expect("start graygate");
        let log = collect(child.stderr.take().expect("piped stderr"), |_| {});
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let mut metrics = None;
        let mut admin = None;
        let mut tls = None;
        // The TLS lines come first; without a plain listener the first of them is the last line.
        let tls_only = self.file.listen.is_empty();
        let out = collect(child.stdout.take().expect("piped stdout"), move |line| {
            let addr = |rest: &str| rest.parse::<SocketAddr>().ok();
            if let Some(rest) = line.strip_prefix("graygate: metrics on http://") {
                metrics = rest.strip_suffix("/metrics").and_then(addr);
            } else if let Some(rest) = line.strip_prefix("graygate: admin on http://") {
                admin = addr(rest);
            } else if let Some(rest) = line.strip_prefix("graygate: listening on https://") {
                tls = tls.or(addr(rest));
                if let (true, Some(listen)) = (tls_only, tls) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((listen, tls, metrics, admin));
                    }
                }
            } else if let Some(rest) = line.strip_prefix("graygate: listening on http://") {
                if let (Some(tx), Some(listen)) = (tx.take(), addr(rest)) {
                    let _ = tx.send((listen, tls, metrics, admin));
                }
            }
        });
        let started = tokio::time::timeout(patient(Duration::from_secs(20)), rx).await;
        let Ok(Ok((addr, tls, metrics, admin))) = started else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("graygate did not start; log:\n{}", lock(&log).join("\n"));
        };
        Gateway {
            addr,
            tls,
            metrics,
            admin,
            dir,
            child,
            successor: None,
            log,
            out,
            builder: self,
        }
    }
}

/// Makes `command` start with at most `n` open files (soft and hard `RLIMIT_NOFILE`).
fn limit_open_files(command: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe and reads
    // a struct copied into the closure.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Collects the lines of a child's output in the background, handing each to `each` first.
fn collect(
    from: impl std::io::Read + Send + 'static,
    mut each: impl FnMut(&str) + Send + 'static,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            each(&line);
            lock(&sink).push(line);
        }
    });
    lines
}

fn lock(lines: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    lines.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `graygate run` process with its config in a temporary directory.
pub struct Gateway {
    /// The data plane's address (the first TLS listener's when there is no plain one).
    pub addr: SocketAddr,
    /// The first TLS listener's address, with `[tls]`.
    tls: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    dir: PathBuf,
    child: Child,
    /// The process that took over by an upgrade (SIGUSR2), once `child` has handed over to it:
    /// not a child of the test, so it is signalled and watched by its pid.
    successor: Option<u32>,
    /// Lines the process wrote to stderr (its log).
    log: Arc<Mutex<Vec<String>>>,
    /// Lines the process wrote to stdout (the access log, when it goes there).
    out: Arc<Mutex<Vec<String>>>,
    /// What it was started with, to restart it or change its policy.
    builder: GatewayBuilder,
}

impl Gateway {
    /// A new client of the data plane.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Waits until a new connection sending `headers` is answered by `version`: a change made
    /// outside this connection (a store edited by hand, a policy swapped) has taken effect.
    /// `.within(..)` bounds the wait.
    pub fn eventually_answers<'a>(
        &self,
        headers: &'a [(&'a str, &'a str)],
        version: &'a str,
    ) -> Eventually<'a, impl AsyncFnMut() -> Result<String, String> + 'a> {
        let addr = self.addr;
        eventually(
            format!("a new connection with {headers:?} answered by {version}"),
            async move || equals(Client::new(addr).version(headers).await, version),
        )
    }

    /// The first TLS listener; panics if the config has no `[tls]`.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls.expect("graygate runs without a TLS listener")
    }

    /// The process id (to look at its memory): the process serving now, the one an upgrade
    /// started once it took over.
    pub fn pid(&self) -> u32 {
        self.successor.unwrap_or_else(|| self.child.id())
    }

    /// Sends SIGUSR2 and waits until the new process it starts serves and the old one has
    /// exited; the new process's pid. The old process's last lines are in the log.
    pub async fn upgrade(&mut self) -> u32 {
        let old = self.pid();
        let before = lock(&self.log).len();
        signal(old, "USR2");
        let line = eventually("the new process serves after SIGUSR2", async || {
            let log = lock(&self.log);
            if let Some(failed) = log[before..].iter().find(|l| l.contains("upgrade failed")) {
                panic!("the upgrade failed: {failed}");
            }
            log[before..]
                .iter()
                .find(|l| l.contains("upgrade: the new process (pid "))
                .cloned()
                .ok_or("not yet")
        })
        .await;
        let pid: u32 = line
            .split("upgrade: the new process (pid ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("a pid in {line}"));
        eventually("the old process exits after handing over", async || {
            if self.successor.is_none() {
                match self.child.try_wait() {
                    Ok(Some(_)) => return Ok(()),
                    other => return Err(format!("{other:?}")),
                }
            }
            if process_gone(old) {
                Ok(())
            } else {
                Err(format!("{old} runs"))
            }
        })
        .await;
        self.successor = Some(pid);
        pid
    }

    /// Sends SIGUSR2 to an upgrade that is expected to fail; the log line that says why. The
    /// process serving before goes on serving.
    pub async fn upgrade_fails(&self) -> String {
        let before = lock(&self.log).len();
        signal(self.pid(), "USR2");
        eventually("the upgrade fails", async || {
            lock(&self.log)[before..]
                .iter()
                .find(|l| l.contains("SIGUSR2: upgrade failed"))
                .cloned()
                .ok_or("not yet")
        })
        .await
    }

    /// Its resident memory (VmRSS, from /proc), in KiB.
    pub fn resident_kib(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
    }

    /// Waits until graygate's log has a line containing `text`; that line.
    pub async fn log_line(&self, text: &str) -> String {
        eventually(format!("a log line with {text:?}"), async || {
            lock(&self.log)
                .iter()
                .find(|l| l.contains(text))
                .cloned()
                .ok_or("not yet")
        })
        .await
    }

    /// The metrics listener, if the config has `[metrics]`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The admin API's address; panics if the config has no `[admin]`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("graygate runs without an admin listener")
    }

    /// `graygate ctl` pointed at this gateway's admin API, with its token.
    pub fn ctl(&self) -> Ctl {
        Ctl::new(self.admin_addr(), self.builder.token().as_deref())
    }

    /// The admin API over HTTP, with this gateway's token.
    pub fn admin_api(&self) -> Admin {
        Admin::new(self.admin_addr(), self.builder.token().as_deref())
    }

    /// The process's directory (config, store, files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `GET /metrics` from the metrics listener: the Prometheus text.
    pub async fn scrape(&self) -> String {
        let addr = self
            .metrics
            .expect("graygate runs without a metrics listener");
        let reply: Reply = Client::new(addr)
            .request("GET", "/metrics", &[], Bytes::new())
            .await;
        assert_eq!(reply.status, 200, "scrape: {reply:?}");
        reply.body
    }

    /// Everything written to stderr so far.
    pub fn log_text(&self) -> String {
        lock(&self.log).join("\n")
    }

    /// Lines written to stdout so far.
    pub fn out_lines(&self) -> Vec<String> {
        lock(&self.out).clone()
    }

    /// Changes the policy in the config (or its policy file) and sends SIGHUP, which makes
    /// graygate read it again and apply it (it changed since it was last applied).
    pub fn change_policy(&mut self, edit: impl FnOnce(&mut PolicyDoc)) {
        edit(&mut self.builder.policy);
        self.builder.write(&self.dir);
        self.hup();
    }

    /// Rewrites the config with `edit` applied to its builder (upstreams, the policy, ...),
    /// without telling graygate: a SIGHUP ([`Gateway::hup`]) or `graygate ctl reload` reads it.
    pub fn edit_config(&mut self, edit: impl FnOnce(GatewayBuilder) -> GatewayBuilder) {
        self.builder = edit(self.builder.clone());
        self.builder.write(&self.dir);
    }

    /// Sends SIGHUP: graygate reads its config again.
    pub fn hup(&self) {
        signal(self.pid(), "HUP");
    }

    /// How many SIGHUPs graygate has logged having handled (its `SIGHUP: policy: ` lines).
    pub fn sighups_done(&self) -> usize {
        lock(&self.log)
            .iter()
            .filter(|l| l.contains("SIGHUP: policy: ") || l.contains("SIGHUP: nothing reloaded"))
            .count()
    }

    /// Sends SIGHUP and waits until graygate has logged handling it; the log lines it wrote
    /// for it.
    pub async fn hup_and_wait(&self) -> String {
        let before = lock(&self.log).len();
        let done = self.sighups_done();
        self.hup();
        eventually("graygate handles the SIGHUP", async || {
            equals(self.sighups_done(), done + 1)
        })
        .await;
        lock(&self.log)[before..].join("\n")
    }

    /// How many SIGUSR1s graygate has logged having handled (its `SIGUSR1: ` lines).
    pub fn sigusr1s_done(&self) -> usize {
        lock(&self.log)
            .iter()
            .filter(|l| l.contains("SIGUSR1: "))
            .count()
    }

    /// Sends SIGUSR1 (reopen the log files, as logrotate does) and waits until graygate has
    /// logged handling it; that line.
    pub async fn usr1_and_wait(&self) -> String {
        let done = self.sigusr1s_done();
        signal(self.child.id(), "USR1");
        eventually("graygate handles the SIGUSR1", async || {
            equals(self.sigusr1s_done(), done + 1)
        })
        .await;
        lock(&self.log)
            .iter()
            .filter(|l| l.contains("SIGUSR1: "))
            .nth(done)
            .cloned()
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit (the log stays readable); how long that
    /// took.
    pub async fn terminate(&mut self) -> Duration {
        let asked = std::time::Instant::now();
        signal(self.pid(), "TERM");
        if let Some(pid) = self.successor {
            eventually("graygate exits after SIGTERM", async || {
                process_gone(pid).then_some(()).ok_or("runs")
            })
            .await;
            return asked.elapsed();
        }
        let child = &mut self.child;
        eventually("graygate exits after SIGTERM", async || {
            match child.try_wait() {
                Ok(Some(exit)) => Ok(exit),
                running => Err(running),
            }
        })
        .await;
        asked.elapsed()
    }

    /// Stops the process (SIGTERM) and waits for it to exit; the directory stays for a restart.
    pub async fn stop(mut self) -> Stopped {
        self.terminate().await;
        Stopped {
            dir: std::mem::take(&mut self.dir),
            builder: self.builder.clone(),
        }
    }

    /// Kills the process with SIGKILL, as a crash would: no shutdown at all, so what it holds in
    /// a shared store (a lease, its records) stays until it expires.
    pub fn kill(self) {
        // `Drop` sends SIGKILL and waits for the exit.
        drop(self);
    }

    /// Stops the process and starts it again on the same directory and config.
    pub async fn restart(self) -> Gateway {
        self.stop().await.start().await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(pid) = self.successor {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_unless_failing(&self.dir);
    }
}

/// A stopped gateway's directory and config; removed in `Drop` unless started again.
pub struct Stopped {
    dir: PathBuf,
    builder: GatewayBuilder,
}

impl Stopped {
    /// The directory it ran in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts it again in the same directory.
    pub async fn start(mut self) -> Gateway {
        let dir = std::mem::take(&mut self.dir);
        self.builder.clone().start_in(dir).await
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        remove_unless_failing(&self.dir);
    }
}

/// Removes a test directory, but keeps it when the test fails so that it can be looked at.
fn remove_unless_failing(dir: &Path) {
    if !dir.as_os_str().is_empty() && !std::thread::panicking() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether process `pid` has ended: gone, or a zombie nobody reaped yet (a process that is not
/// the test's child is reaped by init, maybe later).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// What `graygate check --config <path>` printed and how it exited.
#[derive(Debug)]
pub struct Checked {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `graygate check --config <path>`.
pub fn check(path: &Path) -> Checked {
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run graygate check");
    Checked {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// How one `graygate import` ended.
#[derive(Debug)]
pub struct Imported {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `graygate import --config <config> <args>` in the config's directory to its end.
pub fn import(config: &Path, args: &[&str]) -> Imported {
    let out = Command::new(binary())
        .args(["import", "--config"])
        .arg(config)
        .args(args)
        .current_dir(config.parent().unwrap_or(Path::new(".")))
        .output()
        .expect("run graygate import");
    Imported {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// How a `graygate run` that was expected to stop by itself ended.
#[derive(Debug)]
pub struct Exited {
    pub code: i32,
    pub stderr: String,
}

/// Runs `graygate run --config <path>` (in the config's directory) until it exits by itself, as
/// it must when it cannot start; one that keeps running is killed and the test fails.
pub async fn run_until_exit(path: &Path) -> Exited {
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(path)
        .current_dir(path.parent().unwrap_or(Path::new(".")))
        .env("GRAYGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start graygate");
    let stderr = collect(child.stderr.take().expect("piped stderr"), |_| {});
    /// Kills the process if the wait below panics.
    struct Running(Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut running = Running(child);
    let status = eventually("graygate exits by itself", async || {
        match running.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            other => Err(other),
        }
    })
    .within(Duration::from_secs(20))
    .await;
    drop(running);
    // The exit closed stderr: the reader thread has its last lines soon after.
    let stderr = eventually("graygate's stderr is read to the end", async || {
        if Arc::strong_count(&stderr) == 1 {
            Ok(lock(&stderr).join("\n"))
        } else {
            Err("still reading")
        }
    })
    .await;
    Exited {
        code: status.code().unwrap_or(-1),
        stderr,
    }
}
