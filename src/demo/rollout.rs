//! `graygate demo rollout` and `graygate demo rollout --failing`: a whole rollout carried by
//! graygate itself, in well under two minutes, with nothing else installed.
//!
//! Each walkthrough starts the built-in backends ([`Backend`]; the failing canary answers `500`
//! to every tenth request), an embedded store in a temporary directory, and graygate. Then, as an
//! operator would:
//! - it starts the rollout with `graygate ctl rollout start`: the real ctl code, run in this
//!   process against the demo's admin API, with the command printed so that it can be typed
//!   again;
//! - it sends its own traffic: a fixed rate over a few keep-alive connections, from many user
//!   ids so that the sticky split spreads, bounded in count and in time;
//! - it watches the rollout through the admin API and prints one line per change an operator
//!   cares about: each step with the verdict that allowed it, a failing window, waiting for data,
//!   the promote, the abort with its verdict;
//! - it ends with `graygate ctl rollout status --service web`.
//!
//! It checks that the walkthrough came out as it says: the healthy canary promoted with no failed
//! answer; the failing one aborted in under a minute, with every request on stable afterwards
//! and none of stable's answers failed. [`run`] returns an error otherwise, so that
//! `graygate demo` exits non-zero. (Requests that got no answer at all, as on a machine too busy
//! to answer within 30 seconds, are counted and shown, with why the first got none.)
//!
//! The plan is the default one (5% -> 25% -> 50% -> 100%) with holds and windows of seconds
//! instead of minutes; the analysis settings are the defaults (100 requests of each version per
//! window, 99% significance, ...).

use super::{ctl_prefix, demo_config, Backend, DemoError, TempDir};
use crate::api::{paths, Revisioned, RolloutView};
use crate::app;
use crate::gateway::DriverConfig;
use crate::policy::PolicyDoc;
use crate::rollout::record::VerdictRecord;
use crate::rollout::{Outcome, RolloutState};
use crate::store::EmbeddedStore;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The walkthroughs' policy: the `web` service on stable, with a sticky split by user id that
/// gives the canary nothing yet. The rollout sets the canary's weight step by step.
pub const ROLLOUT_POLICY: &str = r#"
[[routes]]
service = "web"

[[services]]
name = "web"
stable = "stable"
versions = { stable = "stable", canary = "canary" }

# Nobody on the canary yet; the rollout moves its weight, sticky by user id.
[services.split]
weights = { canary = 0 }
by = { header = "X-User-Id" }
"#;

/// The plan the walkthroughs start, as `graygate ctl rollout start --plan FILE` reads it (the
/// `[services.rollout]` table of a policy). The demo writes it to its temporary directory and
/// prints it.
pub const PLAN: &str = r#"# The default plan (5% -> 25% -> 50% -> 100% of users, then promote) in seconds, not minutes.
version = "canary"
steps = [5, 25, 50, 100]
step_time = "5s"        # how long each step holds (default 5m)
interval = "2s"         # the shortest analysis window (default 1m)
post_promotion = "5s"   # the guard after the promote (default 5m)

[analysis]
# Every other setting is the default: 100 requests of each version per window, 99% significance,
# errors at least 2x and 1 point worse, latency at least 1.5x worse.
# Latency must also be this much worse (default 10ms): this demo's graygate, backends and traffic
# share one process and this machine, so their latency tail moves with whatever else runs here,
# by tens of milliseconds or more, and a 2-second window holds only about 100 canary requests at
# the 5% step, so its p99 is one or two requests.
latency_floor = "250ms"
"#;

/// How often the rollout driver looks at the rollout (`[rollouts] tick`), and its lease.
///
/// The default tick, not a shorter one: every tick's work (the analysis, and store writes that
/// sync the embedded store to disk) runs on a worker thread that also serves requests. At 200 ms
/// the latency tail grew enough that the 100% step and the guard failed a healthy canary in 3
/// runs of 6 on a busy machine (with the default 10 ms latency floor); at 1 s, in none of 6. The
/// steps still move within a second of their time.
const DRIVER: DriverConfig = DriverConfig {
    tick: Duration::from_millis(1000),
    lease: Duration::from_secs(3),
};

/// Requests per second of the built-in traffic: at the 5% step a window needs 2000 requests
/// for 100 of them to reach the canary, so a 2 s window fills at this rate.
const RATE: u64 = 1000;
/// Keep-alive connections the traffic is spread over.
const CONNECTIONS: u64 = 4;
/// Distinct user ids the traffic cycles through (`X-User-Id: 1..=USERS`).
const USERS: u64 = 10_000;
/// How often the walkthrough asks the admin API where the rollout is.
const POLL: Duration = Duration::from_millis(100);
/// How long the traffic is watched after the rollout ended, to show where everyone is.
const AFTER: Duration = Duration::from_secs(1);
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which canary a walkthrough rolls out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// Answers every request: promoted step by step.
    Healthy,
    /// Answers `500` to every tenth request: aborted at the first step.
    Failing,
}

impl Canary {
    /// The command that runs this walkthrough, after `graygate`.
    pub fn command(self) -> &'static str {
        match self {
            Canary::Healthy => "demo rollout",
            Canary::Failing => "demo rollout --failing",
        }
    }

    /// How the rollout must end.
    fn expected(self) -> RolloutState {
        match self {
            Canary::Healthy => RolloutState::Promoted,
            Canary::Failing => RolloutState::Aborted,
        }
    }

    /// How long the rollout may take: the healthy one takes about 30 s, the failing one about
    /// 5 s; these bounds leave room for a slow machine and still keep the promises (well under
    /// two minutes; under a minute).
    fn limit(self) -> Duration {
        match self {
            Canary::Healthy => Duration::from_secs(100),
            Canary::Failing => Duration::from_secs(55),
        }
    }
}

/// Runs a walkthrough to its end; `shutdown` (Ctrl-C) stops it early with
/// [`DemoError::Interrupted`]. `Ok` when it came out as expected.
pub async fn run(canary: Canary, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let stable_backend = Backend::start("stable").await?;
    let canary_backend = Backend::start("canary").await?;
    if canary == Canary::Failing {
        canary_backend.fail_every(10);
    }
    let dir = TempDir::new()?;
    let store = Arc::new(EmbeddedStore::open(&dir.0)?);
    let doc: PolicyDoc = toml::from_str(ROLLOUT_POLICY).expect("the rollout policy parses");
    let mut config = demo_config(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &dir.0,
        stable_backend.addr(),
        canary_backend.addr(),
        doc,
    );
    config.rollouts = DRIVER;
    let running = app::start(&config, store).await?;
    let addr = running.addrs[0];
    let admin = running
        .admin_addr
        .expect("the demo config has an admin API");

    let result = walk(
        canary,
        addr,
        admin,
        &stable_backend,
        &canary_backend,
        &dir,
        shutdown,
    )
    .await;
    running.shutdown().await;
    result
}

/// The walkthrough once graygate runs.
async fn walk(
    canary: Canary,
    addr: SocketAddr,
    admin: SocketAddr,
    stable_backend: &Backend,
    canary_backend: &Backend,
    dir: &TempDir,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let limit = canary.limit();
    match canary {
        Canary::Healthy => println!(
            "graygate {}: a healthy canary, carried from 5% of users to everyone by graygate itself",
            canary.command()
        ),
        Canary::Failing => println!(
            "graygate {}: a canary that fails 10% of its requests, stopped by graygate itself",
            canary.command()
        ),
    }
    println!(
        "  backends: stable on {}, canary on {}{}; embedded store in {}",
        stable_backend.addr(),
        canary_backend.addr(),
        if canary == Canary::Failing {
            " (answers 500 to every 10th request)"
        } else {
            ""
        },
        dir.0.display()
    );
    println!("  graygate on http://{addr}, admin API on http://{admin}");
    println!("  dashboard on http://{admin}/ui/ (no sign-in: this admin API has no tokens and answers only this machine)");
    println!(
        "  traffic: {RATE} requests a second from {USERS} users (X-User-Id), over {CONNECTIONS} \
         keep-alive connections"
    );
    let plan = dir.0.join("plan.toml");
    std::fs::write(&plan, PLAN)?;
    println!();
    println!("The plan, in {}:", plan.display());
    for line in PLAN.lines() {
        println!("  {line}");
    }
    println!();

    let traffic = Traffic::start(addr, limit + AFTER * 4, RATE, CONNECTIONS);
    println!("Start the rollout, as an operator does:");
    let plan = plan.display().to_string();
    ctl(
        admin,
        &["rollout", "start", "--service", "web", "--plan", &plan],
    )
    .await?;
    println!();
    println!("What graygate does with it (seconds since the start):");

    let started = Instant::now();
    let mut watch = Watch::new(admin);
    let mut narrator = Narrator::new();
    tokio::pin!(shutdown);
    let view = loop {
        tokio::select! {
            _ = &mut shutdown => return Err(DemoError::Interrupted),
            _ = tokio::time::sleep(POLL) => {}
        }
        let view = watch.rollout().await?;
        for line in narrator.observe(&view) {
            let at = format!("+{:.1}s", started.elapsed().as_secs_f64());
            println!("  {at:>7}  {line}");
        }
        if ended(&view) || started.elapsed() >= limit {
            break view;
        }
    };
    let elapsed = started.elapsed();
    let mut failures = Vec::new();
    if !ended(&view) {
        failures.push(format!(
            "the rollout is still {} at step {}/{} after {:.0}s",
            state_name(view.state),
            view.step,
            view.steps,
            elapsed.as_secs_f64()
        ));
    } else if view.state != Some(canary.expected()) {
        failures.push(format!(
            "the rollout ended {}, not {}: {}",
            state_name(view.state),
            canary.expected(),
            view.reason
        ));
    }

    // Where everyone goes now: a moment for requests in flight at the change, then a second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = traffic.counts();
    tokio::time::sleep(AFTER).await;
    let after = traffic.counts().since(before);
    let (word, everyone) = match canary {
        Canary::Healthy => ("promote", "canary"),
        Canary::Failing => ("abort", "stable"),
    };
    println!();
    println!(
        "After the {word}: {} requests in {}s: {}",
        after.total(),
        AFTER.as_secs(),
        after.words()
    );
    let all_there = match canary {
        Canary::Healthy => after.canary > 0 && after.stable == 0,
        Canary::Failing => after.stable > 0 && after.canary == 0,
    };
    if !all_there || after.failed() > 0 {
        failures.push(format!(
            "after the {word}, not every request went to {everyone} without failing: {}",
            after.words()
        ));
    }
    let traffic_error = traffic.first_error();
    let total = traffic.stop().await;
    println!(
        "All traffic: {} requests from {USERS} users: {}",
        total.total(),
        total.words()
    );
    if let Some(error) = traffic_error {
        println!("  (the first request without an answer: {error})");
    }
    if total.stable_failed > 0 || total.gateway > 0 {
        failures.push(format!(
            "requests failed that the canary did not fail: {}",
            total.words()
        ));
    }
    if canary == Canary::Healthy && total.canary_failed > 0 {
        failures.push(format!(
            "the healthy canary failed {} requests",
            total.canary_failed
        ));
    }

    println!();
    println!("Where the rollout is now:");
    ctl(admin, &["rollout", "status", "--service", "web"]).await?;
    println!();
    if failures.is_empty() {
        let verdict = match canary {
            Canary::Healthy => "promoted",
            Canary::Failing => "aborted (the canary failed 10% of its requests)",
        };
        println!(
            "graygate {}: {verdict} in {:.1}s, as expected",
            canary.command(),
            elapsed.as_secs_f64()
        );
        Ok(())
    } else {
        Err(DemoError::NotAsExpected(failures.join("; ")))
    }
}

/// True once the rollout is over: aborted, or promoted with its guard passed.
fn ended(v: &RolloutView) -> bool {
    match v.state {
        Some(RolloutState::Aborted) => true,
        Some(RolloutState::Promoted) => v.guard_until.is_none(),
        _ => false,
    }
}

fn state_name(state: Option<RolloutState>) -> String {
    state.map_or_else(|| "not started".to_string(), |s| s.to_string())
}

/// Runs `graygate ctl --addr http://<admin> <args>` in this process (the same code as the
/// command), after printing it as it can be typed.
async fn ctl(admin: SocketAddr, args: &[&str]) -> Result<(), DemoError> {
    let command = format!("{} {}", ctl_prefix(admin), args.join(" "));
    println!("  $ {command}");
    /// `graygate ctl`'s command line, as the binary reads it.
    #[derive(clap::Parser)]
    struct Ctl {
        #[command(flatten)]
        args: crate::cli::CtlArgs,
    }
    let admin_url = format!("http://{admin}");
    let argv = ["ctl", "--addr", &admin_url]
        .into_iter()
        .chain(args.iter().copied());
    let parsed =
        <Ctl as clap::Parser>::try_parse_from(argv).expect("the demo's ctl commands are valid");
    // ctl runs its own runtime: on a blocking thread, as a separate process would.
    let code = tokio::task::spawn_blocking(move || crate::cli::run(parsed.args))
        .await
        .map_err(|e| DemoError::Ctl {
            command: format!("{command} ({e})"),
        })?;
    if code == std::process::ExitCode::SUCCESS {
        Ok(())
    } else {
        Err(DemoError::Ctl { command })
    }
}

/// Says what changed in a rollout that an operator cares about, one line per change, from the
/// views of the admin API one after the other.
struct Narrator {
    /// The lines of the view being looked at.
    lines: Vec<String>,
    /// The state, step (from 1) and whether the guard runs, of the last view; `None` before
    /// the first.
    last: Option<(Option<RolloutState>, usize, bool)>,
    /// When the current step was first seen.
    step_seen: Instant,
    /// The newest verdict already looked at (its time in ms since the Unix epoch).
    verdicts_seen: u64,
    /// Failing windows in a row so far, as the verdicts came.
    failing: u32,
}

impl Narrator {
    fn new() -> Self {
        Narrator {
            lines: Vec::new(),
            last: None,
            step_seen: Instant::now(),
            verdicts_seen: 0,
            failing: 0,
        }
    }

    fn line(&mut self, text: &str) {
        self.lines.push(text.to_string());
    }

    /// The weight of step `step` (from 1) of the plan, in words.
    fn weight(v: &RolloutView, step: usize) -> String {
        let w = step
            .checked_sub(1)
            .and_then(|i| v.plan.steps.get(i))
            .map_or(0.0, |s| s.weight);
        crate::rollout::machine::percent(w)
    }

    /// How step `step` (from 1) went: `after 5.1s at 5% and 2 passing windows; the last: ...`.
    fn how_it_went(&self, v: &RolloutView, step: usize) -> String {
        let of_step: Vec<&VerdictRecord> =
            v.verdicts.iter().filter(|r| r.step + 1 == step).collect();
        let passes = of_step
            .iter()
            .filter(|r| r.outcome == Outcome::Pass)
            .count();
        let last = of_step
            .iter()
            .rev()
            .find(|r| r.outcome == Outcome::Pass)
            .map_or_else(String::new, |r| format!("; the last: {}", r.text));
        let windows = if passes == 1 { "window" } else { "windows" };
        format!(
            "after {:.1}s at {} and {passes} passing {windows}{last}",
            self.step_seen.elapsed().as_secs_f64(),
            Self::weight(v, step)
        )
    }

    /// Looks at the rollout as the admin API shows it now: the lines that say what changed.
    fn observe(&mut self, v: &RolloutView) -> Vec<String> {
        self.narrate(v);
        std::mem::take(&mut self.lines)
    }

    fn narrate(&mut self, v: &RolloutView) {
        // Failing windows that did not end the rollout (the one that did is the abort's line).
        let seen = self.verdicts_seen;
        for r in v.verdicts.iter().filter(|r| r.at_ms > seen) {
            match r.outcome {
                Outcome::Pass => self.failing = 0,
                Outcome::Fail => {
                    self.failing += 1;
                    if r.action.is_none() {
                        let guarding =
                            matches!(self.last, Some((Some(RolloutState::Promoted), _, true)));
                        let at = if guarding {
                            "in the guard".to_string()
                        } else {
                            format!("at step {}/{}", r.step + 1, v.steps)
                        };
                        self.line(&format!(
                            "failing window {} of {} {at}: {}",
                            self.failing, v.plan.failure_limit, r.text
                        ));
                    }
                }
                Outcome::Abort | Outcome::NotEnoughData => {}
            }
        }
        self.verdicts_seen = v
            .verdicts
            .iter()
            .map(|r| r.at_ms)
            .max()
            .unwrap_or(self.verdicts_seen);

        let now = (v.state, v.step, v.guard_until.is_some());
        if self.last == Some(now) {
            return;
        }
        let before = self.last.replace(now);
        let Some(state) = v.state else {
            return;
        };
        let step_changed = before.is_none_or(|(_, step, _)| step != v.step);
        let state_changed = before.is_none_or(|(s, _, _)| s != Some(state));
        let prev_step = before.map_or(0, |(_, step, _)| step);
        match state {
            RolloutState::Progressing | RolloutState::Waiting | RolloutState::Paused => {
                if step_changed {
                    let how = if prev_step == 0 {
                        "(rollout started)".to_string()
                    } else {
                        format!("({})", self.how_it_went(v, prev_step))
                    };
                    self.line(&format!(
                        "step {}/{}: canary on {} of users {how}",
                        v.step,
                        v.steps,
                        Self::weight(v, v.step)
                    ));
                    self.step_seen = Instant::now();
                    self.failing = 0;
                }
                if !state_changed && !step_changed {
                    return;
                }
                let at = format!("at step {}/{}", v.step, v.steps);
                match state {
                    RolloutState::Waiting => {
                        let short = v
                            .verdicts
                            .iter()
                            .rev()
                            .find(|r| r.outcome == Outcome::NotEnoughData)
                            .map_or(v.reason.as_str(), |r| r.text.as_str());
                        self.line(&format!("waiting {at}: {short}"));
                    }
                    RolloutState::Paused => self.line(&format!("paused {at}: {}", v.reason)),
                    _ if !step_changed => {
                        self.line(&format!("progressing {at} again: enough data"))
                    }
                    _ => {}
                }
            }
            RolloutState::Promoted if v.guard_until.is_some() => {
                self.line(&format!(
                    "promoted: {} is the stable version, everyone on it ({}); \
                     the guard watches it for {}",
                    v.version,
                    self.how_it_went(v, v.step),
                    crate::rollout::machine::words(v.plan.post_promotion)
                ));
            }
            RolloutState::Promoted => self.line(&v.reason),
            RolloutState::Aborted => {
                let why = v
                    .verdicts
                    .iter()
                    .rev()
                    .find(|r| r.action.as_deref() == Some("aborted"))
                    .map_or_else(
                        || v.reason.clone(),
                        |r| match r.outcome {
                            Outcome::Fail => {
                                format!("{} ({} failing windows in a row)", r.text, self.failing)
                            }
                            _ => r.text.clone(),
                        },
                    );
                self.line(&format!(
                    "ABORTED at step {}/{} ({}), everyone back on stable: {why}",
                    v.step,
                    v.steps,
                    Self::weight(v, v.step)
                ));
            }
        }
    }
}

/// Reads the rollout of `web` from the admin API, over one keep-alive connection.
struct Watch {
    admin: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Watch {
    fn new(admin: SocketAddr) -> Self {
        Watch {
            admin,
            sender: None,
        }
    }

    async fn rollout(&mut self) -> Result<RolloutView, DemoError> {
        let failed = |message: String| DemoError::Admin {
            addr: self.admin,
            message,
        };
        let path = paths::rollout("web");
        let sender = match self.sender.as_mut().filter(|s| !s.is_closed()) {
            Some(s) => s,
            None => self.sender.insert(
                connect(self.admin)
                    .await
                    .map_err(|e| failed(format!("cannot connect: {e}")))?,
            ),
        };
        let answer = get(sender, &path, &[]).await;
        let (status, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                self.sender = None;
                return Err(failed(format!("GET {path}: {e}")));
            }
        };
        if !status.is_success() {
            return Err(failed(format!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice::<Revisioned<RolloutView>>(&body)
            .map(|r| r.body)
            .map_err(|e| failed(format!("GET {path}: {e}")))
    }
}

/// Opens an HTTP/1.1 connection (kept alive for the requests that follow).
async fn connect(addr: SocketAddr) -> std::io::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `GET path` with `headers`: the status and the whole body, within [`REQUEST_TIMEOUT`]. The
/// `Host` is `localhost`, which the admin API without tokens answers (it refuses other names, as
/// a DNS name rebound to 127.0.0.1 would be).
async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(http::StatusCode, Bytes), std::io::Error> {
    let mut request = hyper::Request::get(path).header(http::header::HOST, "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).map_err(std::io::Error::other)?;
    let exchange = async {
        sender.ready().await.map_err(std::io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// What the built-in traffic got back, per version, as its client counts it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    stable: u64,
    stable_failed: u64,
    canary: u64,
    canary_failed: u64,
    /// Answers from neither backend: graygate's own (a 502 or 504).
    gateway: u64,
    /// Requests with no answer at all (the connection failed, or [`REQUEST_TIMEOUT`] passed): on
    /// a machine too busy to answer in time, the client's failures, not graygate's.
    unanswered: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.stable + self.canary + self.gateway + self.unanswered
    }

    /// Failed answers: a backend's 5xx, or graygate's own.
    fn failed(&self) -> u64 {
        self.stable_failed + self.canary_failed + self.gateway
    }

    /// What came after `earlier`.
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            stable: self.stable - earlier.stable,
            stable_failed: self.stable_failed - earlier.stable_failed,
            canary: self.canary - earlier.canary,
            canary_failed: self.canary_failed - earlier.canary_failed,
            gateway: self.gateway - earlier.gateway,
            unanswered: self.unanswered - earlier.unanswered,
        }
    }

    /// `stable answered 2000 (0 failed), canary 100 (10 failed)`.
    fn words(&self) -> String {
        let mut text = format!(
            "stable answered {} ({} failed), canary {} ({} failed)",
            self.stable, self.stable_failed, self.canary, self.canary_failed
        );
        if self.gateway > 0 {
            text.push_str(&format!(
                ", {} answered by graygate itself (no backend answered)",
                self.gateway
            ));
        }
        if self.unanswered > 0 {
            text.push_str(&format!(", {} without an answer", self.unanswered));
        }
        text
    }
}

/// The counters the traffic's connections add to.
#[derive(Default)]
struct Tally {
    /// The next request's number: the user id comes from it, and it bounds the count.
    next: AtomicU64,
    stable: AtomicU64,
    stable_failed: AtomicU64,
    canary: AtomicU64,
    canary_failed: AtomicU64,
    gateway: AtomicU64,
    unanswered: AtomicU64,
    /// Why the first request without an answer got none, to say so.
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            stable: get(&self.stable),
            stable_failed: get(&self.stable_failed),
            canary: get(&self.canary),
            canary_failed: get(&self.canary_failed),
            gateway: get(&self.gateway),
            unanswered: get(&self.unanswered),
        }
    }

    /// Counts a request that got no answer.
    fn unanswered(&self, error: &std::io::Error) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| crate::store::ErrorChain(error).to_string());
    }

    /// Counts one answer: each backend answers with its name, whatever its status.
    fn answer(&self, status: http::StatusCode, body: &[u8]) {
        let failed = status.is_server_error();
        let (answered, failures) = match body {
            b"stable\n" => (&self.stable, &self.stable_failed),
            b"canary\n" => (&self.canary, &self.canary_failed),
            _ => {
                self.gateway.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        answered.fetch_add(1, Ordering::Relaxed);
        if failed {
            failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The built-in traffic: `rate` requests a second over `connections` keep-alive connections
/// ([`RATE`] and [`CONNECTIONS`] in the walkthroughs), user ids cycling through `1..=USERS` in a spread order. It
/// stops by itself after its time limit or `rate` times that many requests; dropping it stops it
/// too.
pub(super) struct Traffic {
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    pub(super) fn start(addr: SocketAddr, limit: Duration, rate: u64, connections: u64) -> Traffic {
        let tally = Arc::new(Tally::default());
        let deadline = tokio::time::Instant::now() + limit;
        let max = rate * limit.as_secs().max(1);
        let period = Duration::from_micros(1_000_000 * connections / rate.max(1));
        let tasks = (0..connections)
            .map(|_| {
                let tally = Arc::clone(&tally);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    // A late tick is made up at once, so that the rate holds on average.
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
                    loop {
                        tick.tick().await;
                        let n = tally.next.fetch_add(1, Ordering::Relaxed);
                        if n >= max || tokio::time::Instant::now() >= deadline {
                            return;
                        }
                        let s = match sender.as_mut().filter(|s| !s.is_closed()) {
                            Some(s) => s,
                            None => match connect(addr).await {
                                Ok(s) => sender.insert(s),
                                Err(e) => {
                                    tally.unanswered(&e);
                                    continue;
                                }
                            },
                        };
                        // Every user once per USERS requests, in an order spread over the ids
                        // (7919 is prime, so coprime with USERS): rules on id ranges see their
                        // share all along, not in one burst per cycle.
                        let user = (n * 7919 % USERS + 1).to_string();
                        match get(s, "/", &[("x-user-id", &user)]).await {
                            Ok((status, body)) => tally.answer(status, &body),
                            Err(e) => {
                                tally.unanswered(&e);
                                sender = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Traffic { tally, tasks }
    }

    fn counts(&self) -> Counts {
        self.tally.counts()
    }

    /// Why the first request without an answer got none.
    fn first_error(&self) -> Option<String> {
        let first = self
            .tally
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        first.clone()
    }

    /// Stops sending and returns what was counted; a request in flight is left unanswered and
    /// not counted.
    async fn stop(mut self) -> Counts {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.tally.counts()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::RolloutDoc;

    /// The rollout of `canary` as the admin API shows it.
    fn view(state: RolloutState, step: usize, verdicts: &[VerdictRecord]) -> RolloutView {
        RolloutView {
            service: "web".into(),
            version: "canary".into(),
            state: Some(state),
            step,
            steps: 4,
            weight: 5.0,
            reason: format!("{state} for a reason"),
            since: None,
            step_started: None,
            guard_until: None,
            plan: RolloutDoc::new("canary"),
            window: None,
            more_requests: None,
            failures: 0,
            verdicts: verdicts.to_vec(),
            driver: None,
        }
    }

    fn verdict(at_ms: u64, step: usize, outcome: Outcome, text: &str) -> VerdictRecord {
        VerdictRecord {
            at_ms,
            step,
            weight: 5.0,
            outcome,
            text: text.into(),
            canary_requests: 100,
            stable_requests: 1900,
            action: None,
        }
    }

    #[test]
    fn a_healthy_rollout_is_told_step_by_step() {
        use RolloutState::*;
        let mut n = Narrator::new();
        assert_eq!(
            n.observe(&view(Progressing, 1, &[])),
            ["step 1/4: canary on 5% of users (rollout started)"]
        );
        assert!(n.observe(&view(Progressing, 1, &[])).is_empty());
        let short = verdict(1, 0, Outcome::NotEnoughData, "short of data");
        assert_eq!(
            n.observe(&view(Waiting, 1, std::slice::from_ref(&short))),
            ["waiting at step 1/4: short of data"]
        );
        let mut seen = vec![short, verdict(2, 0, Outcome::Pass, "good: pass")];
        assert_eq!(
            n.observe(&view(Progressing, 1, &seen)),
            ["progressing at step 1/4 again: enough data"]
        );
        let lines = n.observe(&view(Progressing, 2, &seen));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("step 2/4: canary on 25% of users (after ")
                && lines[0].ends_with("s at 5% and 1 passing window; the last: good: pass)"),
            "{lines:?}"
        );
        for (at, step) in [(3, 1), (4, 1), (5, 2), (6, 3), (7, 3)] {
            seen.push(verdict(at, step, Outcome::Pass, &format!("pass {at}")));
        }
        assert_eq!(n.observe(&view(Progressing, 3, &seen)).len(), 1);
        assert_eq!(n.observe(&view(Progressing, 4, &seen)).len(), 1);
        let mut promoted = view(Promoted, 4, &seen);
        promoted.guard_until = Some("soon".into());
        let lines = n.observe(&promoted);
        assert!(
            lines[0].starts_with("promoted: canary is the stable version, everyone on it (after ")
                && lines[0].ends_with(
                    "at 100% and 2 passing windows; the last: pass 7); the guard watches it for 5m"
                ),
            "{lines:?}"
        );
        // A failing window in the guard is told; the end of the guard too.
        seen.push(verdict(8, 3, Outcome::Fail, "slow: FAIL"));
        promoted.verdicts = seen.clone();
        assert_eq!(
            n.observe(&promoted),
            ["failing window 1 of 2 in the guard: slow: FAIL"]
        );
        assert_eq!(
            n.observe(&view(Promoted, 4, &seen)),
            ["promoted for a reason"]
        );
    }

    #[test]
    fn an_abort_is_told_with_the_verdict_that_caused_it() {
        use RolloutState::*;
        let mut n = Narrator::new();
        n.observe(&view(Progressing, 1, &[]));
        let mut seen = vec![verdict(1, 0, Outcome::Fail, "canary 5xx 10.0%: FAIL")];
        assert_eq!(
            n.observe(&view(Progressing, 1, &seen)),
            ["failing window 1 of 2 at step 1/4: canary 5xx 10.0%: FAIL"]
        );
        let mut last = verdict(2, 0, Outcome::Fail, "canary 5xx 9.7%: FAIL");
        last.action = Some("aborted".into());
        seen.push(last);
        assert_eq!(
            n.observe(&view(Aborted, 1, &seen)),
            [
                "ABORTED at step 1/4 (5%), everyone back on stable: canary 5xx 9.7%: FAIL \
              (2 failing windows in a row)"
            ]
        );
        // The hard guard, or an operator: the verdict or the reason as it is.
        let mut n = Narrator::new();
        n.observe(&view(Progressing, 1, &[]));
        let mut guard = verdict(1, 0, Outcome::Abort, "canary 5xx 30%: ABORT");
        guard.action = Some("aborted".into());
        assert_eq!(
            n.observe(&view(Aborted, 1, &[guard])),
            ["ABORTED at step 1/4 (5%), everyone back on stable: canary 5xx 30%: ABORT"]
        );
        let mut n = Narrator::new();
        assert_eq!(
            n.observe(&view(Aborted, 2, &[])),
            ["ABORTED at step 2/4 (25%), everyone back on stable: aborted for a reason"]
        );
    }

    #[test]
    fn the_policy_compiles_with_nobody_on_the_canary() {
        let doc: PolicyDoc = toml::from_str(ROLLOUT_POLICY).unwrap();
        crate::policy::compile(&doc, &["stable", "canary"]).unwrap();
        let web = &doc.services[0];
        assert_eq!(web.split.as_ref().unwrap().weights["canary"], 0.0);
        assert!(web.rollout.is_none());
    }

    #[test]
    fn the_plan_is_the_default_one_in_seconds() {
        let plan: RolloutDoc = toml::from_str(PLAN).unwrap();
        let default = RolloutDoc::new("canary");
        assert_eq!(plan.steps, default.steps);
        let secs = Duration::from_secs;
        assert_eq!(
            (plan.step_time, plan.interval, plan.post_promotion),
            (secs(5), secs(2), secs(5))
        );
        assert_eq!(
            (plan.max_wait, plan.failure_limit, plan.dry_run),
            (default.max_wait, default.failure_limit, default.dry_run)
        );
        let mut analysis = default.analysis.clone();
        analysis.latency_floor = Duration::from_millis(250);
        assert_eq!(plan.analysis, analysis, "the rest is the default");
        let doc: PolicyDoc = toml::from_str(ROLLOUT_POLICY).unwrap();
        let path = crate::policy::path::FieldPath::new("rollout");
        plan.check(&doc.services[0], &path).unwrap();
    }

    #[test]
    fn counts_say_who_answered_and_who_failed() {
        let tally = Tally::default();
        tally.answer(http::StatusCode::OK, b"stable\n");
        tally.answer(http::StatusCode::OK, b"canary\n");
        tally.answer(http::StatusCode::INTERNAL_SERVER_ERROR, b"canary\n");
        let earlier = tally.counts();
        tally.answer(http::StatusCode::BAD_GATEWAY, b"upstream unreachable");
        tally.unanswered(&std::io::Error::from(std::io::ErrorKind::TimedOut));
        tally.unanswered(&std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let now = tally.counts();
        assert_eq!(
            earlier,
            Counts {
                stable: 1,
                canary: 2,
                canary_failed: 1,
                ..Counts::default()
            }
        );
        assert_eq!(
            (now.total(), now.failed()),
            (6, 2),
            "no answer is no failed answer"
        );
        assert_eq!(
            now.since(earlier),
            Counts {
                gateway: 1,
                unanswered: 2,
                ..Counts::default()
            }
        );
        assert_eq!(
            now.words(),
            "stable answered 1 (0 failed), canary 2 (1 failed), 1 answered by graygate itself \
             (no backend answered), 2 without an answer"
        );
        let first = tally.first_error.lock().unwrap().clone();
        assert_eq!(first.as_deref(), Some("timed out"));
    }
}
