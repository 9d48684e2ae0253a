//! Health checks, passive ejection and the retry of idempotent requests, end to end: the real
//! `graygate run` in front of real nginx backends that are killed (SIGKILL, as a crash) and
//! started again on the same port under a load of keep-alive clients, and in front of the demo
//! backend answering 500 on purpose.
//!
//! Every load loop is bounded in count and time; the health settings are short (a few hundred
//! milliseconds) and stretched with the patience of the machine.

use crate::support::*;
use bytes::Bytes;
use graygate::config::file::{HealthFile, PassiveFile};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The interval of the active checks in these tests (stretched by patience).
fn interval() -> Duration {
    patient(Duration::from_millis(300))
}

/// Health checks every [`interval`], a check bounded by most of it; 2 passes bring a server
/// back, 2 failures take it out.
fn quick_health() -> HealthFile {
    let text = |d: Duration| humantime::format_duration(d).to_string();
    HealthFile {
        interval: Some(text(interval())),
        timeout: Some(text(interval() * 4 / 5)),
        healthy: Some(2),
        unhealthy: Some(2),
        ..HealthFile::default()
    }
}

/// The most requests one load worker sends, and the longest it runs.
const MAX_REQUESTS_PER_WORKER: usize = 200_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(60);

/// What the load saw: every answer (when, and the body: the version that answered) and every
/// failure (a status other than 200, or no answer at all).
#[derive(Default)]
struct Seen {
    answers: Vec<(Instant, String)>,
    failures: Vec<String>,
}

/// Clients sending `GET /` through graygate on keep-alive connections, each request with its
/// own `X-User` (so that a sticky split spreads them), until stopped or out of bounds.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let deadline = Instant::now() + patient(MAX_LOAD_TIME);
        let workers = (0..workers)
            .map(|w| {
                let (stop, seen) = (stop.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut sender = None;
                    for n in 0..MAX_REQUESTS_PER_WORKER {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let user = format!("user-{w}-{}", n % 200);
                        let outcome = request(addr, &mut sender, &user).await;
                        let mut seen = seen.lock().unwrap();
                        match outcome {
                            Ok(version) => seen.answers.push((Instant::now(), version)),
                            Err(why) => seen.failures.push(why),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            workers,
        }
    }

    /// Answers by `version` at or after `since`.
    fn answered_by(&self, version: &str, since: Instant) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.answers
            .iter()
            .filter(|(at, v)| *at >= since && v == version)
            .count()
    }

    /// Waits until `version` answered `n` requests at or after `since`.
    async fn until_answered(&self, version: &str, since: Instant, n: usize, within: Duration) {
        eventually(format!("{n} answers by {version}"), async || {
            equals(self.answered_by(version, since) >= n, true)
        })
        .within(within)
        .await;
    }

    /// Stops the workers and gives back what they saw.
    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("a load worker");
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// One `GET /` on the kept-alive connection in `sender` (a new one when there is none or it
/// closed): the trimmed body of a 200, else what went wrong.
async fn request(
    addr: SocketAddr,
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    user: &str,
) -> Result<String, String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().expect("connected above");
    if let Err(e) = s.ready().await {
        *sender = None;
        return Err(format!("connection not ready: {e}"));
    }
    let req = hyper::Request::get("/")
        .header("host", "example.com")
        .header("x-user", user)
        .body(Empty::new())
        .expect("a valid request");
    let response = match s.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            *sender = None;
            return Err(format!("no answer: {e}"));
        }
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{status}, body cut: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_string();
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// `graygate_upstream_server_healthy` of one server, from a scrape.
async fn healthy(gg: &Gateway, upstream: &str, server: SocketAddr) -> Option<f64> {
    let series =
        format!("graygate_upstream_server_healthy{{server=\"{server}\",upstream=\"{upstream}\"}}");
    metric(&gg.scrape().await, &series)
}

/// The log lines that contain every one of `parts`.
fn lines_with(gg: &Gateway, parts: &[&str]) -> Vec<String> {
    gg.log_text()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// Waits until the log (read from the process as it writes it) has a line for each of `lines`
/// (each given by the parts it contains), then checks that it has exactly one for each.
async fn logged_once(gg: &Gateway, lines: &[&[&str]]) {
    let counts = || -> Vec<usize> {
        lines
            .iter()
            .map(|parts| lines_with(gg, parts).len())
            .collect()
    };
    eventually("every change logged", async || {
        equals(counts().iter().all(|n| *n > 0), true)
    })
    .await;
    assert!(
        counts().iter().all(|n| *n == 1),
        "{lines:?}: {:?}\n{}",
        counts(),
        gg.log_text()
    );
}

/// `web` with half of the users on the canary (sticky by `X-User`).
fn half_on_the_canary() -> Service {
    web().split("canary", 50.0, by_header("X-User"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_canary_under_load_fails_no_request_and_its_share_comes_back() {
    let stable = NginxBackend::start("stable").await;
    let mut canary = NginxBackend::start("canary").await;
    let canary_addr = canary.socket_addr();
    let gg = web_gateway(&stable, &canary)
        .health("stable", Some(quick_health()))
        .health("canary", Some(quick_health()))
        .service(half_on_the_canary())
        .metrics()
        .start()
        .await;
    let load = Load::start(gg.addr, 3);
    let started = Instant::now();
    load.until_answered("canary", started, 100, Duration::from_secs(20))
        .await;
    load.until_answered("stable", started, 100, Duration::from_secs(20))
        .await;

    // The canary dies. Its share goes to stable at once (within one interval): every request
    // that was on the canary's connections or meant for it is answered by stable.
    canary.stop();
    let killed = Instant::now();
    let fallbacks = r#"graygate_fallbacks_total{service="web",version="canary"}"#;
    eventually(
        "requests meant for the canary answered by stable",
        async || {
            equals(
                metric(&gg.scrape().await, fallbacks).unwrap_or(0.0) > 0.0,
                true,
            )
        },
    )
    .within(interval())
    .await;
    // Its health checks take it out of service: from then on it is not even tried.
    eventually("the canary out of service", async || {
        equals(healthy(&gg, "canary", canary_addr).await, Some(0.0))
    })
    .within(interval() * 4)
    .await;
    let unhealthy = r#"graygate_unhealthy_fallbacks_total{service="web",version="canary"}"#;
    eventually(
        "requests sent to stable for a canary that is down",
        async || {
            equals(
                metric(&gg.scrape().await, unhealthy).unwrap_or(0.0) > 0.0,
                true,
            )
        },
    )
    .await;
    load.until_answered("stable", killed, 300, Duration::from_secs(20))
        .await;
    assert_eq!(load.answered_by("canary", killed + interval()), 0);

    // Back on the same port: after two passing checks its share comes back (two intervals,
    // give or take a check that a busy machine made time out).
    canary.restart().await;
    let restarted = Instant::now();
    load.until_answered("canary", restarted, 1, Duration::from_secs(5))
        .await;
    load.until_answered("canary", restarted, 100, Duration::from_secs(20))
        .await;
    let seen = load.stop().await;
    assert_eq!(seen.failures, Vec::<String>::new(), "failed requests");
    assert!(seen.answers.len() > 600, "{} answers", seen.answers.len());
    assert_eq!(healthy(&gg, "canary", canary_addr).await, Some(1.0));

    // State, not noise: one line when it went down, one when it came back; the same for the
    // upstream having no server in service.
    let server = format!("server={canary_addr}");
    logged_once(
        &gg,
        &[
            &["upstream server is down", &server],
            &["upstream server is back up", &server],
            &["no server of the upstream is in service", "upstream=canary"],
            &["has a server in service again", "upstream=canary"],
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_stable_servers_under_load_fails_no_request() {
    let one = NginxBackend::start("stable").await;
    let mut two = NginxBackend::start("stable").await;
    let gg = gateway()
        .upstream_servers("stable", &[one.socket_addr(), two.socket_addr()])
        .route(route("web"))
        .service(service("web").stable("stable", "stable"))
        .metrics()
        .start()
        .await;
    let load = Load::start(gg.addr, 3);
    let started = Instant::now();
    load.until_answered("stable", started, 300, Duration::from_secs(20))
        .await;
    assert!(two.requests().len() > 50, "both servers take requests");

    // No active checks: the requests that were on its connections when it died are sent again
    // to the other server, and a failed connect moves a request on to the other server at once.
    two.stop();
    let killed = Instant::now();
    load.until_answered("stable", killed, 1000, Duration::from_secs(20))
        .await;
    let seen = load.stop().await;
    assert_eq!(seen.failures, Vec::<String>::new(), "failed requests");
    // The dead server is tried after the other one for a while after each failed connect: it
    // does not cost every request a connect.
    let failures = format!(
        "graygate_upstream_connect_failures_total{{server=\"{}\",upstream=\"stable\"}}",
        two.socket_addr()
    );
    let failed_connects = metric(&gg.scrape().await, &failures).unwrap_or(0.0);
    assert!(
        (1.0..=20.0).contains(&failed_connects),
        "{failed_connects} failed connects for 1000 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_5xx_in_a_row_eject_a_server() {
    let good = backend("stable").await;
    let bad = backend("stable").await;
    bad.fail_every(1);
    let gg = gateway()
        .upstream_servers("stable", &[good.addr(), bad.addr()])
        .passive(
            "stable",
            PassiveFile {
                ejection: Some("1m".into()),
                ..PassiveFile::default()
            },
        )
        .route(route("web"))
        .service(service("web").stable("stable", "stable"))
        .metrics()
        .admin()
        .start()
        .await;
    let mut client = gg.client();
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.push(client.get(&[]).await.status);
    }
    // Round robin: every other request reached it until its fifth 500 in a row.
    assert_eq!(bad.requests(), 5);
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 5);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 95);

    assert_eq!(healthy(&gg, "stable", bad.addr()).await, Some(0.0));
    assert_eq!(healthy(&gg, "stable", good.addr()).await, Some(1.0));
    let status = gg.admin_api().get("/v1/status").await;
    let servers = &status["services"][0]["health"]["stable"]["servers"];
    assert_eq!(servers[1]["server"], bad.addr().to_string());
    assert_eq!(servers[1]["state"], "ejected");
    assert_eq!(
        servers[1]["reason"],
        "ejected for 1m: 5 failures in a row, the last: answered 500"
    );
    assert_eq!(servers[0]["state"], "up");
    let server = format!("server={}", bad.addr());
    logged_once(
        &gg,
        &[&["upstream server is down", &server, "ejected for 1m"]],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_half_of_the_servers_are_ejected() {
    let (a, b) = (backend("stable").await, backend("stable").await);
    a.fail_every(1);
    b.fail_every(1);
    // A canary of one server that fails every request: never ejected (it is the last one).
    let lone = backend("canary").await;
    lone.fail_every(1);
    let gg = gateway()
        .upstream_servers("stable", &[a.addr(), b.addr()])
        .upstream("canary", &lone)
        .route(route("web"))
        .service(web().rule("beta", "canary", header("X-Env").equals("beta")))
        .start()
        .await;
    let mut client = gg.client();
    for _ in 0..60 {
        assert_eq!(client.get(&[]).await.status, 500);
    }
    let mut counts = [a.requests(), b.requests()];
    counts.sort();
    assert_eq!(
        counts,
        [5, 55],
        "one ejected after 5, the other keeps answering"
    );
    for _ in 0..20 {
        assert_eq!(client.get(&[("X-Env", "beta")]).await.status, 500);
    }
    assert_eq!(lone.requests(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_down_at_start_gets_no_request() {
    let stable = NginxBackend::start("stable").await;
    let canary = NginxBackend::start_with("canary", 503).await;
    let gg = web_gateway(&stable, &canary)
        .health("canary", Some(quick_health()))
        .service(web().split("canary", 100.0, by_header("X-User")))
        .metrics()
        .admin()
        .start()
        .await;
    // The first check ran before the listener opened: the very first requests go to stable.
    let mut client = gg.client();
    for user in 0..20 {
        let user = user.to_string();
        assert_eq!(client.version(&[("X-User", &user)]).await, "stable");
    }
    let requests = canary.requests();
    assert!(!requests.is_empty(), "the canary was checked");
    assert!(
        requests.iter().all(|path| path == "/healthz"),
        "only checks reached the canary: {requests:?}"
    );
    let text = gg.scrape().await;
    let unhealthy = r#"graygate_unhealthy_fallbacks_total{service="web",version="canary"}"#;
    assert_eq!(metric(&text, unhealthy), Some(20.0));
    assert_eq!(
        healthy(&gg, "canary", canary.socket_addr()).await,
        Some(0.0)
    );

    // `ctl explain` says the canary would be chosen, and that stable answers.
    let explained = gg.ctl().ok(&["explain", "-H", "X-User:1"]);
    let addr = canary.socket_addr();
    assert!(
        explained.starts_with(&format!(
            "version    canary\nfallback   stable answers: no server of upstream `canary` is in \
             service ({addr} down: its first health check failed: GET /healthz: answered 503)\n"
        )),
        "{explained}"
    );
    // `ctl status` shows it per version.
    let status = gg.ctl().ok(&["status"]);
    let canary_row = status
        .lines()
        .find(|l| l.starts_with("web ") && l.contains(" canary "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(canary_row.ends_with("DOWN"), "{status}");
    assert!(
        status.contains("web canary: no server in service: its requests go to stable"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_a_reload_adds_are_checked_before_use_and_removed_ones_no_more() {
    let stable = NginxBackend::start("stable").await;
    let canary = NginxBackend::start_with("canary", 503).await;
    let spare = NginxBackend::start("spare").await;
    let mut gg = web_gateway(&stable, &canary)
        .service(web().split("canary", 100.0, by_header("X-User")))
        .start()
        .await;
    // No checks: the canary answers (its health endpoint is never asked).
    assert_eq!(gg.client().version(&[("X-User", "1")]).await, "canary");

    // A reload gives the canary checks: they run before the new table is used.
    gg.edit_config(|b| {
        b.health("canary", Some(quick_health()))
            .upstream("spare", &spare)
            .health("spare", Some(quick_health()))
    });
    gg.hup_and_wait().await;
    let mut client = gg.client();
    for user in 0..10 {
        let user = user.to_string();
        assert_eq!(client.version(&[("X-User", &user)]).await, "stable");
    }
    // The added upstream is checked every interval.
    let checks = |n: &NginxBackend| n.requests().iter().filter(|p| *p == "/healthz").count();
    let first = checks(&spare);
    assert!(first >= 1, "checked before the reload ended");
    eventually("the spare checked again", async || {
        equals(checks(&spare) > first, true)
    })
    .await;

    // Removed: its checks stop. A check under way when the reload ran may still land, so the
    // count is taken after that, then must not move for several intervals.
    gg.edit_config(|b| b.without_upstream("spare"));
    gg.hup_and_wait().await;
    tokio::time::sleep(interval() * 2).await;
    let after_removal = checks(&spare);
    tokio::time::sleep(interval() * 5).await;
    assert_eq!(checks(&spare), after_removal, "no check after the removal");
}

/// The rows of the table after `<!-- checked: <marker>` in docs/config.md: each key (without its
/// backticks) and its default as written.
fn documented_defaults(marker: &str) -> Vec<(String, String)> {
    let doc = include_str!("../../docs/config.md");
    let start = doc
        .find(&format!("<!-- checked: {marker}"))
        .unwrap_or_else(|| panic!("docs/config.md has no `{marker}` table"));
    doc[start..]
        .lines()
        .skip(3) // the marker, the header, the separator
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let code = |cell: &str| cell.trim_matches('`').to_string();
            (code(cells[1]), cells[2].to_string())
        })
        .collect()
}

/// docs/config.md's defaults of `health` and `passive`, written into a config, are what graygate
/// runs with when they are left out.
#[test]
fn the_documented_health_defaults_are_the_defaults() {
    let config = |upstream: &str| {
        let text = format!(
            "listen = [\"127.0.0.1:8080\"]\n[[upstreams]]\nname = \"a\"\nservers = [\"h:1\"]\n{upstream}\n"
        );
        graygate::config::parse(&text, std::path::Path::new("g.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .upstreams
            .remove(0)
    };
    let written = |rows: &[(String, String)]| {
        rows.iter()
            .filter(|(_, default)| default.starts_with('`'))
            .map(|(key, default)| format!("{key} = {}", default.trim_matches('`')))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let health = documented_defaults("health defaults");
    let keys: Vec<&str> = health.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "path",
            "interval",
            "timeout",
            "healthy",
            "unhealthy",
            "statuses",
            "host"
        ]
    );
    let documented = config(&format!("health = {{ {} }}", written(&health)));
    let defaults = config("health = {}");
    assert_eq!(documented.health, defaults.health);
    assert_eq!(
        defaults.health.and_then(|h| h.host),
        None,
        "host: the server's"
    );

    let passive = documented_defaults("passive defaults");
    let keys: Vec<&str> = passive.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["failures", "ejection", "max_ejection"]);
    let documented = config(&format!("passive = {{ {} }}", written(&passive)));
    assert_eq!(documented.passive, config("").passive);
}
