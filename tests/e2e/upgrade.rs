//! The zero-downtime upgrade (SIGUSR2) under load: the new process takes over the listening
//! sockets and the embedded store, and not one request is refused or fails; changes made through
//! the admin API meanwhile are either done and kept, or refused with "retry"; an upgrade that
//! fails leaves the old process serving and writable.
//!
//! Before it existed, a stop-then-start under load left 1.9 s of refused connections (7,120).

use crate::support::*;
use bytes::Bytes;
use graygate::config::file::StoreFile;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the load saw: answers, and every way a request can fail, each counted.
#[derive(Default, Debug)]
struct Tally {
    answered: AtomicU64,
    /// A connection refused or reset before it was accepted.
    refused: AtomicU64,
    /// A request sent (or queued on an open connection) that got no answer.
    failed: AtomicU64,
    /// An answer other than 200.
    not_ok: AtomicU64,
    /// The first few failures, to show when the test fails.
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 10 {
            errors.push(what);
        }
    }
}

/// Bounds of every load loop: it stops when told, or after this long, or this many requests.
const LOAD_BOUND: Duration = Duration::from_secs(60);
const LOAD_MAX_REQUESTS: u64 = 500_000;

/// A client that keeps its connection alive as long as graygate does, and counts strictly: a
/// request written to a connection that is then closed under it is a failure (as wrk counts it),
/// not retried. A connection closed between two requests (after `Connection: close`) is only
/// reopened.
async fn keep_alive_client(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let started = Instant::now();
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    for _ in 0..LOAD_MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_BOUND {
            return;
        }
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            sender = Some(s);
                        }
                        Err(e) => tally.note(&tally.refused, format!("handshake: {e}")),
                    }
                }
                Err(e) => {
                    tally.note(&tally.refused, format!("connect: {e}"));
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        if s.ready().await.is_err() {
            // Closed after its last answer, before this request was written: reopen.
            sender = None;
            continue;
        }
        let req = hyper::Request::get("/")
            .header("host", "example.com")
            .body(Empty::new())
            .expect("a request");
        match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(_) if status == 200 => {
                        tally.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => tally.note(&tally.not_ok, format!("status {status}")),
                    Err(e) => tally.note(&tally.failed, format!("body: {e}")),
                }
            }
            Err(e) => {
                tally.note(&tally.failed, format!("request: {e}"));
                sender = None;
            }
        }
    }
}

/// A client that opens a new connection for every request: what a refused connection hits.
async fn new_connection_client(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let started = Instant::now();
    for _ in 0..LOAD_MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_BOUND {
            return;
        }
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                tally.note(&tally.refused, format!("connect: {e}"));
                continue;
            }
        };
        let (mut s, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        {
            Ok(pair) => pair,
            Err(e) => {
                tally.note(&tally.refused, format!("handshake: {e}"));
                continue;
            }
        };
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .header("host", "example.com")
            .header("connection", "close")
            .body(Empty::<Bytes>::new())
            .expect("a request");
        match s.send_request(req).await {
            Ok(resp) if resp.status() == 200 => {
                let _ = resp.into_body().collect().await;
                tally.answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(resp) => tally.note(&tally.not_ok, format!("status {}", resp.status())),
            Err(e) => tally.note(&tally.failed, format!("request: {e}")),
        }
    }
}

/// What the admin writer saw: keys whose addition was acknowledged, and refusals.
#[derive(Default, Debug)]
struct Writes {
    acknowledged: BTreeSet<String>,
    /// 503 `upgrading` with `Retry-After`.
    retry_later: u64,
    /// 503 `store_unavailable` from a write that passed the check just before the hand-over:
    /// also nothing changed.
    unavailable: u64,
    other: Vec<String>,
}

/// Adds one gray list key after another through the admin API until told to stop.
async fn admin_writer(addr: SocketAddr, stop: Arc<AtomicBool>) -> Writes {
    let started = Instant::now();
    let mut writes = Writes::default();
    let mut admin = Admin::new(addr, None);
    for i in 0..10_000u32 {
        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_BOUND {
            break;
        }
        let key = format!("10.9.{}.{}", i / 250, i % 250);
        let body = json!({"entries": [{"key": key}]}).to_string();
        let (reply, json) = admin
            .send("POST", "/v1/lists/gray_ips/entries", &[], &body)
            .await;
        match (reply.status, json["error"]["code"].as_str()) {
            (200..=299, _) => {
                writes.acknowledged.insert(key);
            }
            (503, Some("upgrading")) => {
                assert_eq!(
                    reply.headers.get("retry-after").map(|v| v.as_bytes()),
                    Some(&b"1"[..]),
                    "{reply:?}"
                );
                writes.retry_later += 1;
            }
            (503, Some("store_unavailable")) => writes.unavailable += 1,
            _ => writes.other.push(format!("{reply:?}")),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writes
}

/// Adds `ip` to the gray list through the admin API, as an operator does; it must be taken.
async fn add_to_gray_list(gg: &Gateway, ip: &str) {
    let body = json!({"entries": [{"key": ip}]}).to_string();
    let (reply, _) = gg
        .admin_api()
        .send("POST", "/v1/lists/gray_ips/entries", &[], &body)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

fn gray_list_gateway(stable: &Backend, canary: &Backend) -> GatewayBuilder {
    web_gateway(stable, canary)
        .trusted_proxies(["127.0.0.0/8"])
        .service(web().rule(
            "gray-ips",
            "canary",
            client_ip().lookup("gray_ips").equals("1"),
        ))
        .admin()
        .metrics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_refuses_nothing_fails_nothing_and_keeps_every_change() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let mut gg = gray_list_gateway(&stable, &canary).start().await;
    // An operator's change at runtime, before the upgrade.
    add_to_gray_list(&gg, "10.0.0.7").await;
    assert_eq!(
        gg.client().version(&[("X-Real-IP", "10.0.0.7")]).await,
        "canary"
    );
    let old_pid = gg.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    for _ in 0..6 {
        load.push(tokio::spawn(keep_alive_client(
            gg.addr,
            stop.clone(),
            tally.clone(),
        )));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(new_connection_client(
            gg.addr,
            stop.clone(),
            tally.clone(),
        )));
    }
    let writer = tokio::spawn(admin_writer(gg.admin_addr(), stop.clone()));
    // Under way before the upgrade.
    eventually("the load is answered", async || {
        (tally.answered.load(Ordering::Relaxed) > 500)
            .then_some(())
            .ok_or("not yet")
    })
    .await;
    let before = tally.answered.load(Ordering::Relaxed);

    let new_pid = gg.upgrade().await;
    assert_ne!(new_pid, old_pid);
    // And on after it, against the new process alone.
    let after_upgrade = tally.answered.load(Ordering::Relaxed);
    eventually("the new process answers the load", async || {
        (tally.answered.load(Ordering::Relaxed) > after_upgrade + 500)
            .then_some(())
            .ok_or("not yet")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("a load task");
    }
    let writes = writer.await.expect("the admin writer");

    let errors = tally.errors.lock().unwrap().clone();
    let answered = tally.answered.load(Ordering::Relaxed);
    assert!(answered > before, "{tally:?}");
    assert_eq!(tally.refused.load(Ordering::Relaxed), 0, "{errors:?}");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "{errors:?}");
    assert_eq!(tally.not_ok.load(Ordering::Relaxed), 0, "{errors:?}");
    assert!(writes.other.is_empty(), "{:?}", writes.other);

    // The new process has the store: the change from before, and every acknowledged write.
    let log = gg.log_text();
    assert!(log.contains("upgrade: this new process serves"), "{log}");
    assert!(log.contains("upgrade: handed over; exiting"), "{log}");
    assert_eq!(
        gg.client().version(&[("X-Real-IP", "10.0.0.7")]).await,
        "canary"
    );
    let listed = gg.admin_api().get("/v1/lists/gray_ips/entries").await;
    let keys: BTreeSet<String> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["key"].as_str().map(str::to_string))
        .collect();
    for key in &writes.acknowledged {
        assert!(keys.contains(key), "acknowledged {key} is lost");
    }
    assert!(keys.contains("10.0.0.7"));
    // And it takes changes.
    add_to_gray_list(&gg, "10.0.0.8").await;
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.8")], "canary")
        .await;
    eprintln!(
        "upgrade under load: {answered} answered, 0 refused, 0 failed; admin writes: {} acknowledged, {} asked to retry, {} refused by the store",
        writes.acknowledged.len(),
        writes.retry_later,
        writes.unavailable
    );
    // A second upgrade, from the process the first one started.
    let third = gg.upgrade().await;
    assert_ne!(third, new_pid);
    assert_eq!(
        gg.client().version(&[("X-Real-IP", "10.0.0.8")]).await,
        "canary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_config_that_does_not_load_leaves_the_old_process_serving() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let gg = gray_list_gateway(&stable, &canary).start().await;
    let pid = gg.pid();
    let config = gg.dir().join("graygate.toml");
    let good = std::fs::read_to_string(&config).expect("the config");
    std::fs::write(&config, format!("{good}\nnot toml at all\n")).expect("write the config");

    let line = gg.upgrade_fails().await;
    assert!(line.contains("the new process exited"), "{line}");
    assert_eq!(gg.pid(), pid);
    // Still serving, and still taking changes.
    add_to_gray_list(&gg, "10.0.0.9").await;
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.9")], "canary")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_fails_after_the_store_was_handed_over_takes_it_back() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let mut gg = gray_list_gateway(&stable, &canary).start().await;
    add_to_gray_list(&gg, "10.0.0.7").await;
    // The new process gets everything ready, asks for the store, then cannot open it: its data
    // directory would be under a regular file.
    let blocker = gg.dir().join("not-a-directory");
    std::fs::write(&blocker, "a file").expect("write a file");
    let unusable = blocker.join("data");
    gg.edit_config(|b| {
        b.store(StoreFile {
            path: Some(unusable.display().to_string()),
            ..StoreFile::default()
        })
    });

    let line = gg.upgrade_fails().await;
    assert!(line.contains("the new process exited"), "{line}");
    let log = gg.log_text();
    assert!(log.contains("cannot create the data directory"), "{log}");
    // The old process took its store back: it reads and writes it again.
    assert_eq!(
        gg.client().version(&[("X-Real-IP", "10.0.0.7")]).await,
        "canary"
    );
    add_to_gray_list(&gg, "10.0.0.9").await;
    gg.eventually_answers(&[("X-Real-IP", "10.0.0.9")], "canary")
        .await;
}

/// The messages a service manager gets on its notify socket.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(patient(Duration::from_secs(10))))
            .expect("a read timeout");
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message, as sent.
    fn next(&self) -> String {
        let mut buf = [0u8; 1024];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notify message in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_the_new_main_pid_after_an_upgrade_and_stopping() {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let notify = NotifySocket::bind();
    let mut gg = gray_list_gateway(&stable, &canary)
        .env("NOTIFY_SOCKET", &notify.path.display().to_string())
        .start()
        .await;
    assert_eq!(notify.next(), "READY=1\n");

    let new_pid = gg.upgrade().await;
    // The new process says it is ready; the old one hands the service over to it.
    let mut heard = vec![notify.next(), notify.next()];
    heard.sort();
    assert_eq!(
        heard,
        [
            format!("MAINPID={new_pid}\nREADY=1\n"),
            "READY=1\n".to_string()
        ]
    );

    gg.terminate().await;
    assert_eq!(notify.next(), "STOPPING=1\n");
}
