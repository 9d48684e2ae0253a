//! End-to-end test support: builders that start the real `graygate` binary, real HTTP backends
//! and a small HTTP client, all on 127.0.0.1 port 0. Every process a test starts is stopped by a
//! guard's `Drop`, even when the test fails.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend answering every request with its name and a newline. It counts requests and
/// connections, and echoes request headers back as `echo-<name>` response headers.
pub struct Backend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, c) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let r = r.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let r = r.clone();
                        async move {
                            r.fetch_add(1, Ordering::Relaxed);
                            let mut resp = hyper::Response::builder();
                            for (k, v) in req.headers() {
                                resp = resp.header(format!("echo-{k}"), v);
                            }
                            // Count the body, so tests can check large uploads arrived whole.
                            let mut body = req.into_body();
                            let mut n = 0u64;
                            while let Some(frame) = body.frame().await {
                                if let Ok(data) = frame.map(|f| f.into_data()) {
                                    n += data.map_or(0, |d| d.len() as u64);
                                } else {
                                    break;
                                }
                            }
                            let resp = resp
                                .header("x-body-bytes", n.to_string())
                                .body(Full::new(Bytes::from(format!("{name}\n"))))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            requests,
            connections,
            task,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A running `graygate run` process with its config in a temporary directory.
pub struct Graygate {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Child,
    /// Lines the process wrote to stderr (its log), collected in the background.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// The metrics listener, when the config has `[metrics] listen` (read from the
    /// `graygate: metrics on http://ADDR/metrics` line, printed before the listening line).
    pub metrics: Option<SocketAddr>,
    /// Lines the process wrote to stdout (the access log, when it goes there), collected in
    /// the background.
    pub out: Arc<std::sync::Mutex<Vec<String>>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_graygate")
}

impl Graygate {
    /// Writes `config` (TOML; `listen` is set here to port 0) into a new temporary directory and
    /// starts graygate on it.
    pub fn start(config: &str) -> Graygate {
        let dir = tempfile::Builder::new()
            .prefix("graygate-e2e")
            .tempdir()
            .unwrap()
            .keep();
        Self::start_in(dir, config)
    }

    /// Starts graygate in `dir` (an earlier instance's directory: same store, same files).
    pub fn start_in(dir: PathBuf, config: &str) -> Graygate {
        let path = dir.join("graygate.toml");
        std::fs::write(&path, format!("listen = [\"127.0.0.1:0\"]\n{config}")).unwrap();
        let mut child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&path)
            .env("GRAYGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start graygate");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out_sink = out.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut metrics = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .strip_prefix("graygate: metrics on http://")
                    .and_then(|rest| rest.strip_suffix("/metrics"))
                {
                    metrics = Some(addr.parse::<SocketAddr>().unwrap());
                } else if let Some(addr) = line.strip_prefix("graygate: listening on http://") {
                    let _ = tx.send((addr.parse::<SocketAddr>().unwrap(), metrics));
                }
                out_sink.lock().unwrap().push(line);
            }
        });
        let mut gg = Graygate {
            addr: "0.0.0.0:0".parse().unwrap(),
            dir,
            child,
            log,
            metrics: None,
            out,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, metrics)) => {
                gg.addr = addr;
                gg.metrics = metrics;
            }
            Err(_) => panic!("graygate did not start; log:\n{}", gg.log_text()),
        }
        gg
    }

    /// Lines written to stdout so far.
    pub fn out_lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// `GET /metrics` from the metrics listener: the Prometheus text.
    pub async fn scrape(&self) -> String {
        let addr = self
            .metrics
            .expect("graygate runs without a metrics listener");
        let reply = Client::new(addr)
            .request("GET", "/metrics", &[], Bytes::new())
            .await;
        assert_eq!(reply.status, 200, "scrape: {reply:?}");
        reply.body
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("graygate.toml")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGHUP: graygate re-reads its config's policy and applies it.
    pub fn sighup(&self) {
        signal(self.child.id(), "HUP");
    }

    /// Stops the process (SIGTERM, then waits) and returns its directory for a restart.
    pub fn stop(mut self) -> PathBuf {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::mem::take(&mut self.dir)
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

impl Drop for Graygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes a directory left by [`Graygate::stop`].
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A keep-alive HTTP/1.1 client on one connection, reconnecting when it closes.
pub struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

/// A response: status, selected headers, body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, sender: None }
    }

    /// GET / with these headers.
    pub async fn get(&mut self, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", "/", headers, Bytes::new()).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        for attempt in 0..2 {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .expect("connect to graygate");
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                self.sender = Some(sender);
            }
            let sender = self.sender.as_mut().unwrap();
            if sender.ready().await.is_err() {
                self.sender = None;
                continue;
            }
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "example.com");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            match sender
                .send_request(req.body(Full::new(body.clone())).unwrap())
                .await
            {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .expect("read body")
                        .to_bytes();
                    return Reply {
                        status,
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    };
                }
                Err(e) if attempt == 0 && e.is_canceled() => self.sender = None,
                Err(e) => panic!("request failed: {e}"),
            }
        }
        panic!("request failed twice");
    }

    /// The body of GET / with these headers, trimmed: the name of the backend that answered.
    pub async fn version(&mut self, headers: &[(&str, &str)]) -> String {
        let r = self.get(headers).await;
        assert_eq!(r.status, 200, "status for {headers:?}: {r:?}");
        r.body.trim().to_string()
    }
}

/// Polls `check` every 10 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Upstream definitions for a stable and a canary backend.
pub fn upstreams(stable: SocketAddr, canary: SocketAddr) -> String {
    format!(
        "[[upstreams]]\nname = \"stable\"\nservers = [\"{stable}\"]\n[[upstreams]]\nname = \"canary\"\nservers = [\"{canary}\"]\n"
    )
}

/// The value of one series in Prometheus text, e.g.
/// `metric(&text, r#"graygate_requests_total{route="web",status_class="2xx",version="stable"}"#)`.
/// Labels are written in the order the exporter sorts them (by name). `None`: no such series.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a number"))
}

/// Polls `file` until it holds at least `lines` lines (the access log is flushed about once a
/// second); returns them. Panics after `within`.
pub async fn read_lines(file: &Path, lines: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let found: Vec<String> = text.lines().map(str::to_string).collect();
        if found.len() >= lines {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, expected {lines}:\n{text}",
            file.display(),
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Graygate {
    /// The admin API's address, when the config has `[admin]` (read from the
    /// `graygate: admin on http://ADDR` line, printed before the listening line).
    pub fn admin_addr(&self) -> SocketAddr {
        self.out_lines()
            .iter()
            .find_map(|line| line.strip_prefix("graygate: admin on http://"))
            .map(|addr| addr.parse().expect("an admin address"))
            .expect("graygate runs without an admin listener")
    }
}
