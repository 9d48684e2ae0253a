//! Test support for the shared stores: real `redis-server` and `memcached` processes on free
//! loopback ports, and a "hanging" server that accepts connections and never answers.
//!
//! Every guard stops its process in `Drop`, even when the test fails. Nothing sleeps to wait: a
//! server is ready when it answers on its port, polled with a deadline.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A free loopback port: bound, then released for the server to take.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Sends `request` to 127.0.0.1:`port` and returns what comes back until the answer contains
/// `until`, or `None` if the server cannot be reached or stops answering for 500 ms.
fn ask(port: u16, request: &[u8], until: &str) -> Option<String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(request).ok()?;
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    while !answer.contains(until) {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Some(answer)
}

/// Polls until `ready()` or the deadline; false if the deadline passed.
fn wait_until(mut ready: impl FnMut() -> bool, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server process the guards below start, stop and restart on one port.
struct Process {
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    /// Whether the process is SIGSTOPped.
    paused: bool,
}

impl Process {
    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

    /// SIGSTOP, and waits until every thread of the process is stopped: `kill` returns before a
    /// thread running on another CPU has stopped, and such a thread may still answer a request.
    fn stop_process(&self) {
        self.signal("-STOP");
        let Some(pid) = self.pid() else { return };
        let all_stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|task| {
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    // The state follows the command name in parentheses.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                })
            })
        };
        assert!(
            wait_until(all_stopped, Duration::from_secs(5)),
            "process {pid} did not stop"
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` on a free loopback port, without persistence.
pub struct RedisServer {
    port: u16,
    process: Process,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--requirepass", "secret"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        // A port picked free can be taken by someone else before the server binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir for redis");
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                dir.path().to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut server = RedisServer {
                port,
                process: Process {
                    program: "redis-server",
                    args,
                    child: None,
                    paused: false,
                },
                _dir: dir,
            };
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server did not start on any free port");
    }

    fn launch(&mut self) -> bool {
        self.process.spawn().expect("run redis-server");
        let port = self.port;
        // Ready when the server on the port is this process: with ports picked concurrently,
        // another test's server may answer on a port this one failed to bind.
        let password = self
            .process
            .args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.process.args.get(i + 1).cloned());
        let mut request = String::new();
        if let Some(password) = &password {
            request.push_str(&format!("AUTH {password}\r\n"));
        }
        request.push_str("INFO server\r\n");
        let mine = format!("process_id:{}\r\n", self.process.pid().unwrap_or(0));
        let ready = wait_until(
            || {
                self.process.exited()
                    || ask(port, request.as_bytes(), "tcp_port:").is_some_and(|a| a.contains(&mine))
            },
            READY_DEADLINE,
        );
        ready && !self.process.exited()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.process.kill();
        assert!(
            self.launch(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): it keeps its connections and port but answers nothing.
    pub fn pause(&mut self) {
        self.process.stop_process();
        self.process.paused = true;
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&mut self) {
        self.process.signal("-CONT");
        self.process.paused = false;
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

/// A `memcached` on a free loopback port (TCP only, one thread).
pub struct MemcachedServer {
    port: u16,
    process: Process,
}

impl MemcachedServer {
    pub fn start() -> MemcachedServer {
        for _ in 0..5 {
            let port = free_port();
            let args: Vec<String> = [
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "1",
                "-u",
                "root",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut server = MemcachedServer {
                port,
                process: Process {
                    program: "memcached",
                    args,
                    child: None,
                    paused: false,
                },
            };
            if server.launch() {
                return server;
            }
        }
        panic!("memcached did not start on any free port");
    }

    fn launch(&mut self) -> bool {
        self.process.spawn().expect("run memcached");
        let port = self.port;
        // Ready when the server on the port is this process (see RedisServer::launch).
        let mine = format!("STAT pid {}\r\n", self.process.pid().unwrap_or(0));
        let ready = wait_until(
            || {
                self.process.exited()
                    || ask(port, b"stats\r\n", "END\r\n").is_some_and(|a| a.contains(&mine))
            },
            READY_DEADLINE,
        );
        ready && !self.process.exited()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        self.process.kill();
    }

    pub fn restart(&mut self) {
        self.process.kill();
        assert!(
            self.launch(),
            "memcached did not restart on port {}",
            self.port
        );
    }

    pub fn pause(&mut self) {
        self.process.stop_process();
        self.process.paused = true;
    }

    pub fn resume(&mut self) {
        self.process.signal("-CONT");
        self.process.paused = false;
    }

    /// Sends raw protocol text and returns the answer up to and including `until` (e.g. "STORED"
    /// or "END"), as another memcached client would.
    pub fn raw(&self, request: &str, until: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect memcached");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let mut buf = [0u8; 1024];
        while !answer.contains(until) {
            let n = stream.read(&mut buf).expect("memcached answers");
            assert!(n > 0, "memcached closed the connection; so far: {answer:?}");
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        answer
    }
}

/// A TCP server that accepts every connection and never answers: a store that hangs.
pub struct HangingServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HangingServer {
    pub fn start() -> HangingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hanging server");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        held.push(stream);
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
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
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

/// Polls `cond` every 5 ms until it holds; panics naming `what` after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
