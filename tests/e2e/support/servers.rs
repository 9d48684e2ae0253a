//! Real `redis-server`, `memcached` and `nginx` processes on free loopback ports, and a "hanging"
//! server that accepts connections and never answers.
//!
//! `nginx` is the HTTP backend a test can kill (SIGKILL, as a crash) and start again on the same
//! port, which an in-process backend cannot do: it answers every path with its name, and logs the
//! path of every request it got, so that a test can tell health checks from traffic.
//!
//! Every guard stops its process in `Drop`, even when the test fails. A server is ready when it
//! answers on its port as this very process (its pid in `INFO`/`stats`), polled with a deadline.

use super::eventually::{eventually, patient};
use graygate::config::file::StoreFile;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server may take to start answering (before patience).
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Sends `request` to 127.0.0.1:`port` and returns what comes back until the answer contains
/// `until`, or `None` if the server cannot be reached or stops answering for 500 ms.
async fn ask(port: u16, request: &[u8], until: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(request).await.ok()?;
        let mut answer = String::new();
        let mut buf = [0u8; 4096];
        while !answer.contains(until) {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Some(answer)
    };
    tokio::time::timeout(Duration::from_millis(500), exchange)
        .await
        .ok()
        .flatten()
}

/// A server process the guards below start, stop and restart on one port.
struct Process {
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl Process {
    fn new(program: &'static str, args: Vec<String>) -> Process {
        Process {
            program,
            args,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.program));
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(sig)
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Starts the process and waits until `answers(pid)` (a probe of its port) says that this
    /// process answers; false if it exited first (the port was taken by someone else).
    async fn launch<F: AsyncFnMut(u32) -> bool>(&mut self, mut answers: F) -> bool {
        self.spawn();
        let pid = self.pid();
        let program = self.program;
        let exited = eventually(format!("{program} (pid {pid}) answers"), async || {
            if self.exited() {
                Ok(true)
            } else if answers(pid).await {
                Ok(false)
            } else {
                Err("no answer yet")
            }
        })
        .within(READY_DEADLINE)
        .await;
        !exited
    }

    /// SIGSTOP, and waits until every thread of the process is stopped: `kill` returns before a
    /// thread running on another CPU has stopped, and such a thread may still answer a request.
    async fn pause(&self) {
        self.signal("-STOP");
        let pid = self.pid();
        let states = || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            Some(
                tasks
                    .flatten()
                    .map(|task| {
                        // The state follows the command name in parentheses.
                        std::fs::read_to_string(task.path().join("stat"))
                            .ok()
                            .and_then(|stat| stat.rsplit_once(") ")?.1.chars().next())
                            .unwrap_or('?')
                    })
                    .collect::<String>(),
            )
        };
        eventually(
            format!("every thread of process {pid} stops"),
            async || match states() {
                Some(s) if s.chars().all(|c| c == 'T' || c == 't') => Ok(()),
                seen => Err(seen),
            },
        )
        .within(Duration::from_secs(5))
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What sets one kind of server apart from another: the program, and how a running one says
/// which process it is. Everything else (free ports, readiness, stop, restart, pause) is
/// [`Server`]'s, the same for every kind.
pub trait Kind {
    /// The program to run.
    const PROGRAM: &'static str;
    /// The request that makes the server name its pid, and the text that ends its answer.
    fn pid_request(&self) -> (String, &'static str);
    /// The line of that answer that names `pid`.
    fn pid_line(pid: u32) -> String;
}

/// A server process of kind `K` on a free loopback port; stopped in `Drop`, even when the test
/// fails.
pub struct Server<K: Kind> {
    port: u16,
    process: Process,
    kind: K,
}

/// `redis-server`, without persistence.
pub struct Redis {
    /// `--requirepass`, for the readiness probe.
    password: Option<String>,
    _dir: tempfile::TempDir,
}

/// `memcached`, TCP only, one thread.
pub struct Memcached;

/// A `redis-server` on a free loopback port, without persistence.
pub type RedisServer = Server<Redis>;

/// A `memcached` on a free loopback port (TCP only, one thread).
pub type MemcachedServer = Server<Memcached>;

/// `nginx` as an HTTP backend: one process (no master, so that SIGKILL takes all of it), its
/// files in a directory of its own.
pub struct Nginx {
    _dir: tempfile::TempDir,
    /// Where it logs the path of every request.
    access_log: std::path::PathBuf,
}

/// An `nginx` on a free loopback port answering `<name>\n` (see [`Server::<Nginx>::start`]).
pub type NginxBackend = Server<Nginx>;

impl Kind for Nginx {
    const PROGRAM: &'static str = "nginx";

    fn pid_request(&self) -> (String, &'static str) {
        ("GET /__pid HTTP/1.0\r\n\r\n".into(), " end")
    }

    fn pid_line(pid: u32) -> String {
        format!("pid {pid} end")
    }
}

impl Kind for Redis {
    const PROGRAM: &'static str = "redis-server";

    fn pid_request(&self) -> (String, &'static str) {
        let mut request = String::new();
        if let Some(password) = &self.password {
            request.push_str(&format!("AUTH {password}\r\n"));
        }
        request.push_str("INFO server\r\n");
        (request, "tcp_port:")
    }

    fn pid_line(pid: u32) -> String {
        format!("process_id:{pid}\r\n")
    }
}

impl Kind for Memcached {
    const PROGRAM: &'static str = "memcached";

    fn pid_request(&self) -> (String, &'static str) {
        ("stats\r\n".into(), "END\r\n")
    }

    fn pid_line(pid: u32) -> String {
        format!("STAT pid {pid}\r\n")
    }
}

impl<K: Kind> Server<K> {
    /// Starts `K::PROGRAM` with `args(port)` on a free port.
    async fn start_on_a_free_port(kind: K, args: impl Fn(&str) -> Vec<String>) -> Server<K> {
        let mut server = Server {
            port: 0,
            process: Process::new(K::PROGRAM, Vec::new()),
            kind,
        };
        // A port picked free can be taken by someone else before the server binds it: try again.
        for _ in 0..5 {
            server.port = super::gateway::dead_addr().port();
            server.process = Process::new(K::PROGRAM, args(&server.port.to_string()));
            if server.launch().await {
                return server;
            }
        }
        panic!("{} did not start on any free port", K::PROGRAM);
    }

    async fn launch(&mut self) -> bool {
        let port = self.port;
        // Ready when the server on the port is this process: with ports picked concurrently,
        // another test's server may answer on a port this one failed to bind.
        let (request, until) = self.kind.pid_request();
        self.process
            .launch(async |pid| {
                ask(port, request.as_bytes(), until)
                    .await
                    .is_some_and(|a| a.contains(&K::pid_line(pid)))
            })
            .await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.process.kill();
        assert!(
            self.launch().await,
            "{} did not restart on port {}",
            K::PROGRAM,
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): it keeps its connections and port but answers nothing.
    pub async fn pause(&self) {
        self.process.pause().await;
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.process.signal("-CONT");
    }
}

impl Server<Redis> {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--requirepass", "secret"]`.
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let dir_text = dir.path().to_str().expect("a UTF-8 temp dir").to_owned();
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let args = |port: &str| {
            let mut args = vec![
                "--port",
                port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                &dir_text,
            ];
            args.extend_from_slice(extra);
            args.into_iter().map(str::to_string).collect()
        };
        let kind = Redis {
            password,
            _dir: dir,
        };
        Server::start_on_a_free_port(kind, args).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The nginx backend's config; `PORT`, `HEALTH` (the status of `/healthz`) and `NAME` are
/// filled in. Paths are relative to its directory (`-p`).
const NGINX_CONFIG: &str = r#"daemon off;
master_process off;
worker_processes 1;
pid nginx.pid;
error_log error.log;
events { worker_connections 1024; }
http {
    log_format paths '$request_uri';
    access_log access.log paths;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:PORT;
        location = /__pid { access_log off; return 200 "pid $pid end\n"; }
        location = /healthz { return HEALTH "NAME\n"; }
        location / { return 200 "NAME\n"; }
    }
}
"#;

impl Server<Nginx> {
    /// An nginx answering `200 <name>\n` to every path, `/healthz` included.
    pub async fn start(name: &str) -> NginxBackend {
        NginxBackend::start_with(name, 200).await
    }

    /// An nginx answering `200 <name>\n`, but `/healthz` with `health_status`.
    pub async fn start_with(name: &str, health_status: u16) -> NginxBackend {
        let dir = tempfile::tempdir().expect("temp dir for nginx");
        let prefix = dir.path().to_str().expect("a UTF-8 temp dir").to_owned();
        let access_log = dir.path().join("access.log");
        let name = name.to_owned();
        let args = move |port: &str| {
            // The config names the port: written anew for each port tried.
            let config = NGINX_CONFIG
                .replace("PORT", port)
                .replace("HEALTH", &health_status.to_string())
                .replace("NAME", &name);
            std::fs::write(format!("{prefix}/nginx.conf"), config).expect("write nginx.conf");
            ["-p", &prefix, "-c", "nginx.conf", "-e", "error.log"]
                .map(str::to_string)
                .to_vec()
        };
        let kind = Nginx {
            _dir: dir,
            access_log,
        };
        Server::start_on_a_free_port(kind, args).await
    }

    /// The path of every request it answered so far (health checks too), oldest first.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.kind.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Its address.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl super::gateway::Address for &NginxBackend {
    fn address(&self) -> std::net::SocketAddr {
        self.socket_addr()
    }
}

impl Server<Memcached> {
    pub async fn start() -> MemcachedServer {
        let args = |port: &str| {
            [
                "-l",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "0",
                "-t",
                "1",
                "-u",
                "root",
            ]
            .map(str::to_string)
            .to_vec()
        };
        Server::start_on_a_free_port(Memcached, args).await
    }

    /// Sends raw protocol text and returns the answer up to and including `until` (e.g. "STORED"
    /// or "END"), as another memcached client would.
    pub fn raw(&self, request: &str, until: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect memcached");
        stream
            .set_read_timeout(Some(patient(Duration::from_secs(2))))
            .expect("a read timeout");
        stream
            .write_all(request.as_bytes())
            .expect("send to memcached");
        let mut answer = String::new();
        let mut buf = [0u8; 1024];
        while !answer.contains(until) {
            let n = stream.read(&mut buf).expect("memcached answers");
            assert!(n > 0, "memcached closed the connection; so far: {answer:?}");
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        answer
    }

    /// A counter from memcached's `stats`.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.raw("stats\r\n", "END\r\n");
        stats
            .lines()
            .find_map(|line| {
                let rest = line
                    .strip_prefix("STAT ")?
                    .strip_prefix(name)?
                    .strip_prefix(' ')?;
                rest.trim().parse().ok()
            })
            .unwrap_or_else(|| panic!("no stat {name} in {stats}"))
    }
}

/// `[store]` for Redis at `url`.
pub fn redis_store(url: String) -> StoreFile {
    StoreFile {
        kind: Some("redis".into()),
        url: Some(url),
        ..StoreFile::default()
    }
}

/// `[store]` for memcached at `addr` (`host:port`).
pub fn memcached_store(addr: String) -> StoreFile {
    StoreFile {
        kind: Some("memcached".into()),
        servers: Some(vec![addr]),
        ..StoreFile::default()
    }
}

impl From<&RedisServer> for StoreFile {
    fn from(server: &RedisServer) -> StoreFile {
        redis_store(server.url())
    }
}

impl From<&MemcachedServer> for StoreFile {
    fn from(server: &MemcachedServer) -> StoreFile {
        memcached_store(server.addr())
    }
}

/// A TCP server that accepts every connection and never answers: a store that hangs.
pub struct HangingServer {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Connections it has accepted (and holds).
    accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HangingServer {
    pub fn start() -> HangingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hanging server");
        let port = listener.local_addr().expect("a bound address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let accepted = Arc::clone(&accepted);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        held.push(stream);
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                }
                for stream in held {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            })
        };
        HangingServer {
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HangingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        );
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// TCP sockets on this machine whose far end is `port`, in any state: open connections to the
/// server there and the ones still closing (an orphan waiting for a paused server to acknowledge
/// its close holds a socket too). From `/proc/net/tcp` and `tcp6`.
pub fn sockets_toward(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|table| {
            std::fs::read_to_string(table)
                .unwrap_or_else(|e| panic!("read {table}: {e}"))
                .lines()
                .skip(1)
                .filter(|row| {
                    // `sl local_address rem_address ...`, addresses as `HEXIP:HEXPORT`.
                    let remote = row.split_whitespace().nth(2).unwrap_or("");
                    remote
                        .rsplit_once(':')
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                        == Some(port)
                })
                .count()
        })
        .sum()
}

/// `redis-sentinel`, with its config file in a directory of its own (a sentinel rewrites it).
pub struct Sentinel {
    _dir: tempfile::TempDir,
}

impl Kind for Sentinel {
    const PROGRAM: &'static str = "redis-sentinel";

    fn pid_request(&self) -> (String, &'static str) {
        ("INFO server\r\n".into(), "tcp_port:")
    }

    fn pid_line(pid: u32) -> String {
        format!("process_id:{pid}\r\n")
    }
}

/// The name under which a [`SentinelSet`]'s sentinels monitor its primary.
pub const SENTINEL_MASTER: &str = "graygate-primary";

/// A Redis Sentinel set on free loopback ports: one primary, one replica, three sentinels (quorum
/// 2) that declare a primary down after 500 ms and fail over within a few seconds. Every process
/// is stopped in `Drop`.
pub struct SentinelSet {
    /// The servers: the primary first, as started; a failover swaps their roles, not this order.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<Server<Sentinel>>,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        let primary = RedisServer::start().await;
        let primary_port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary_port]).await;
        eventually("the replica is in sync", async || {
            let info = replica.cli(&["INFO", "replication"]);
            if info.contains("master_link_status:up") {
                Ok(())
            } else {
                Err(info)
            }
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for redis-sentinel");
            let path = dir.path().to_str().expect("a UTF-8 temp dir").to_owned();
            let primary_port = primary_port.clone();
            let args = move |port: &str| {
                let config = format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {path}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 500\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 2000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
                );
                let file = format!("{path}/sentinel.conf");
                std::fs::write(&file, config).expect("write sentinel.conf");
                vec![file]
            };
            sentinels.push(Server::start_on_a_free_port(Sentinel { _dir: dir }, args).await);
        }
        let set = SentinelSet {
            servers: vec![primary, replica],
            sentinels,
        };
        // A failover needs the sentinels to know each other (hello messages every 2 s) and the
        // replica.
        for sentinel in &set.sentinels {
            eventually(
                "the sentinels know each other and the replica",
                async || {
                    let master = cli(sentinel.port(), &["SENTINEL", "MASTER", SENTINEL_MASTER]);
                    let field = |name: &str| {
                        let mut lines = master.lines();
                        lines.find(|l| *l == name)?;
                        lines.next().map(str::to_owned)
                    };
                    match (field("num-other-sentinels"), field("num-slaves")) {
                        (Some(s), Some(r)) if s == "2" && r == "1" => Ok(()),
                        seen => Err(seen),
                    }
                },
            )
            .within(Duration::from_secs(15))
            .await;
        }
        set
    }

    /// `redis+sentinel://<every sentinel>/<master>`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| s.addr()).collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The port of the primary as the first sentinel that answers names it.
    pub fn primary_port(&self) -> u16 {
        for sentinel in &self.sentinels {
            let out = Command::new("redis-cli")
                .args(["-p", &sentinel.port().to_string()])
                .args(["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER])
                .output();
            if let Ok(out) = out {
                let text = String::from_utf8_lossy(&out.stdout);
                if let Some(port) = text.lines().nth(1).and_then(|p| p.trim().parse().ok()) {
                    return port;
                }
            }
        }
        panic!("no sentinel names the primary");
    }

    /// The server that is the primary now.
    pub fn primary(&mut self) -> &mut RedisServer {
        let port = self.primary_port();
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .expect("the primary is one of the set's servers")
    }
}

/// `redis-cli -p <port> <args>`, trimmed (a sentinel, or a server of any kind).
pub fn cli(port: u16, args: &[&str]) -> String {
    try_cli(port, args).unwrap_or_else(|e| panic!("{e}"))
}

/// [`cli`] for a server that may drop the connection meanwhile (a primary that the sentinels
/// are turning into a replica closes its clients): the failure, to look again.
pub fn try_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!("redis-cli -p {port} {args:?}: {out:?}"))
    }
}

/// A Redis Cluster of three primaries on free loopback ports (no replicas), created with
/// `redis-cli --cluster create`; each node in a directory of its own. Every process is stopped
/// in `Drop`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for a cluster node");
            let dir_text = dir.path().to_str().expect("a UTF-8 temp dir").to_owned();
            // The cluster bus port defaults to port + 10000, which may not exist or be taken: a
            // free one of its own.
            let bus = super::gateway::dead_addr().port().to_string();
            let args = move |port: &str| {
                [
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    &dir_text,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus,
                ]
                .map(str::to_string)
                .to_vec()
            };
            let kind = Redis {
                password: None,
                _dir: dir,
            };
            nodes.push(Server::start_on_a_free_port(kind, args).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {out:?}");
        for node in &nodes {
            eventually("the cluster is up on every node", async || {
                let info = node.cli(&["CLUSTER", "INFO"]);
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    Ok(())
                } else {
                    Err(info)
                }
            })
            .within(Duration::from_secs(15))
            .await;
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://<every node>`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| n.addr()).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis-cli -c` (following redirections) on the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-c")
            .arg("-p")
            .arg(self.nodes[0].port().to_string())
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The hash slot of `key`, as the cluster computes it.
    pub fn slot(&self, key: &str) -> u16 {
        self.cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number")
    }

    /// The port of the node that holds the existing key `key` (the one that counts a key in its
    /// slot; the others count none).
    pub fn node_of(&self, key: &str) -> u16 {
        let slot = self.slot(key).to_string();
        self.nodes
            .iter()
            .find(|n| n.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]) != "0")
            .map_or_else(|| panic!("no node holds {key}"), |n| n.port())
    }
}

impl From<&SentinelSet> for StoreFile {
    fn from(set: &SentinelSet) -> StoreFile {
        redis_store(set.url())
    }
}

impl From<&RedisCluster> for StoreFile {
    fn from(cluster: &RedisCluster) -> StoreFile {
        redis_store(cluster.url())
    }
}
