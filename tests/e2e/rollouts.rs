//! Rollouts end to end: real graygate processes carry a release by themselves, judging the canary
//! against stable on their own traffic, with demo backends that misbehave on purpose
//! ([`Backend::fail_every`], [`Backend::delay`]) and the real `graygate ctl` to start and inspect
//! each rollout.
//!
//! - a canary answering 5xx to 5% of its requests is aborted, and stable never failed;
//! - a canary 50 ms slower than stable is aborted on latency;
//! - a healthy canary goes 5 -> 25 -> 50 -> 100 and is promoted without one failed request;
//! - a quiet service waits for data, then pauses after `max_wait`;
//! - a restart mid-rollout goes on at the same step;
//! - two instances on one Redis: the driver is SIGKILLed, the other takes over within the lease,
//!   and a verdict sums both instances' traffic;
//! - a dry run records a failing verdict and changes nothing.
//!
//! Plans are short (steps of a second or a few, windows of one second, tens of requests) and
//! the driver ticks every 200 ms, so that a whole rollout takes seconds. Load loops are bounded
//! in time and in count, send a new user id with every request so that the sticky split spreads
//! them, and count every answer by the version that gave it. Too little traffic on a busy
//! machine only makes a step wait longer (a window collects until it has enough), never fail.
//!
//! Waits poll the admin API's rollout answer (what `ctl rollout status --json` prints) rather
//! than running `ctl` every few milliseconds; `ctl` starts every rollout and is read at the
//! checks.

use crate::support::*;
use graygate::api::{History, Revisioned, RolloutView};
use graygate::policy::model::ServiceDoc;
use graygate::rollout::record::VerdictRecord;
use graygate::rollout::{Outcome, RolloutState};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the rollout driver looks (`[rollouts] tick`).
const TICK: Duration = Duration::from_millis(200);

/// The driver's store lease (`[rollouts] lease`): on one Redis, how soon another instance takes
/// over after the driver dies.
const LEASE: Duration = Duration::from_secs(2);

/// How long a short plan may take on a busy machine (before patience); load loops stop by then.
const PLAN_TIME: Duration = Duration::from_secs(40);

/// The service `web` (stable and canary) with a sticky split by user id that gives the canary
/// nothing yet, an admin API with a token, and a driver that ticks every [`TICK`].
fn rollout_gateway(stable: &Backend, canary: &Backend) -> GatewayBuilder {
    web_gateway(stable, canary)
        .admin_token("alice", TOKEN)
        .service(web().split("canary", 0.0, by_header("X-User-Id")))
        .rollouts(TICK, LEASE)
}

/// `graygate ctl rollout start --service web --version canary <plan>`; what it answered.
fn start(ctl: &Ctl, plan: &[&str]) -> RolloutView {
    let mut args = vec![
        "rollout",
        "start",
        "--service",
        "web",
        "--version",
        "canary",
    ];
    args.extend_from_slice(plan);
    let view = parse(ctl.json(&args));
    assert_eq!(
        view.state,
        Some(RolloutState::Progressing),
        "ctl rollout start {plan:?} answered {}",
        describe(&view)
    );
    view
}

/// `graygate ctl rollout status --service web --json`.
fn ctl_status(ctl: &Ctl) -> RolloutView {
    parse(ctl.json(&["rollout", "status", "--service", "web"]))
}

/// The changes of the policy, oldest first (`ctl history --json`).
fn history(ctl: &Ctl) -> Vec<(String, String)> {
    let json = ctl.json(&["history", "--limit", "100"]);
    let history: History = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("ctl history printed no history ({e}): {json}"));
    history
        .entries
        .into_iter()
        .rev()
        .map(|e| (e.actor, e.summary))
        .collect()
}

/// The summaries of the changes the rollout driver made, oldest first.
fn rollout_moves(ctl: &Ctl) -> Vec<String> {
    history(ctl)
        .into_iter()
        .filter(|(actor, _)| actor == "rollout")
        .map(|(_, summary)| summary)
        .collect()
}

/// Whether `gg` logged that it drives the rollouts as instance `id`.
fn drives(gg: &Gateway, id: &str) -> bool {
    gg.log_text()
        .lines()
        .any(|l| l.contains("this instance drives the rollouts") && l.contains(id))
}

/// The service `web` as the admin API stores it (`ctl services get web`).
fn web_service(ctl: &Ctl) -> ServiceDoc {
    let text = ctl.ok(&["services", "get", "web"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a service ({e}): {text}"))
}

fn parse(json: serde_json::Value) -> RolloutView {
    serde_json::from_value::<Revisioned<RolloutView>>(json.clone())
        .unwrap_or_else(|e| panic!("not a rollout answer ({e}): {json}"))
        .body
}

/// A rollout in a few lines, for failure messages: state, step, window, every verdict.
fn describe(v: &RolloutView) -> String {
    let state = v.state.map_or("not started", |s| s.as_str());
    let mut out = format!(
        "{state} at step {}/{} ({}%), driver {:?}: {}",
        v.step, v.steps, v.weight, v.driver, v.reason
    );
    if let Some(w) = &v.window {
        out.push_str(&format!(
            "\n  window {:.1}s: canary {} requests ({} errors), stable {} ({} errors)",
            w.seconds, w.canary.requests, w.canary.errors, w.stable.requests, w.stable.errors
        ));
    }
    for d in &v.verdicts {
        out.push_str(&format!("\n  {}", verdict_line(d)));
    }
    out
}

fn verdict_line(d: &VerdictRecord) -> String {
    let action = d
        .action
        .as_ref()
        .map_or(String::new(), |a| format!(" -> {a}"));
    format!(
        "step {} ({}%) {:?}: {}{action}",
        d.step + 1,
        d.weight,
        d.outcome,
        d.text
    )
}

/// The latency part of a verdict's text (`canary p99 ... vs stable ...`), and the error part.
fn parts(text: &str) -> (Option<&str>, Option<&str>) {
    let mut latency = None;
    let mut errors = None;
    for part in text.split("; ") {
        if part.starts_with("canary p50 ") || part.starts_with("canary p99 ") {
            latency = Some(part);
        } else if part.starts_with("canary 5xx ") {
            errors = Some(part);
        }
    }
    (latency, errors)
}

/// Prints a value as its own text in a panic message (`eventually` shows what it saw with `{:?}`).
struct Seen(String);

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rollout of `web` as one instance's admin API answers it: cheap enough to poll.
struct Watch(Admin);

impl Watch {
    fn on(gg: &Gateway) -> Watch {
        Watch(gg.admin_api())
    }

    /// The rollout now; a refusal (a shared store that timed out on a busy machine) is what was
    /// seen, and the poll goes on.
    async fn now(&mut self) -> Result<RolloutView, String> {
        let (reply, json) = self
            .0
            .send("GET", "/v1/services/web/rollout", &[], "")
            .await;
        if reply.status == 200 {
            Ok(parse(json))
        } else {
            Err(format!("{} {}", reply.status, reply.body))
        }
    }

    /// Polls until `done` says yes, within `limit`; fails at once if the rollout ended (aborted,
    /// or promoted with no guard running) without `done` saying yes, since it never moves again.
    async fn until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&RolloutView) -> bool,
    ) -> RolloutView {
        eventually(format!("the rollout of web: {what}"), async || {
            let v = self.now().await.map_err(Seen)?;
            if done(&v) {
                return Ok(v);
            }
            let ended = match v.state {
                Some(RolloutState::Aborted) => true,
                Some(RolloutState::Promoted) => v.guard_until.is_none(),
                _ => false,
            };
            assert!(
                !ended,
                "waiting for {what}, the rollout ended: {}",
                describe(&v)
            );
            Err(Seen(describe(&v)))
        })
        .within(limit)
        .await
    }

    async fn until_state(&mut self, state: RolloutState, limit: Duration) -> RolloutView {
        self.until(state.as_str(), limit, |v| v.state == Some(state))
            .await
    }
}

/// What a load loop got: (version that answered, status) -> how many answers. graygate's own
/// answers (a 502 with its own body) count under their body.
#[derive(Debug, Default, Clone)]
struct Tally(BTreeMap<(String, u16), u64>);

impl Tally {
    fn add(&mut self, other: &Tally) {
        for (key, n) in &other.0 {
            *self.0.entry(key.clone()).or_default() += n;
        }
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Answers by `version`, whatever their status.
    fn of(&self, version: &str) -> u64 {
        self.0
            .iter()
            .filter(|((v, _), _)| v == version)
            .map(|(_, n)| n)
            .sum()
    }

    /// Answers by `version` that were not 200.
    fn failed(&self, version: &str) -> u64 {
        self.0
            .iter()
            .filter(|((v, status), _)| v == version && *status != 200)
            .map(|(_, n)| n)
            .sum()
    }

    /// Answers that came from neither backend.
    fn others(&self) -> u64 {
        self.total() - self.of("stable") - self.of("canary")
    }

    /// No answer failed, except the canary's own 5xx when `canary_may_fail`; every answer came
    /// from a backend.
    fn assert_healthy(&self, what: &str, canary_may_fail: bool) {
        let canary_failed = if canary_may_fail {
            0
        } else {
            self.failed("canary")
        };
        assert!(
            self.failed("stable") == 0 && canary_failed == 0 && self.others() == 0,
            "{what}: failed answers in {self:?}"
        );
    }
}

/// How a load loop runs; see [`Load::start`].
#[derive(Debug, Clone, Copy)]
struct LoadPlan {
    /// Keep-alive connections, each sending one request after the other.
    clients: u64,
    /// User ids start here (distinct loops, distinct users).
    users_from: u64,
    /// Each connection stops after this long ...
    limit: Duration,
    /// ... or this many requests.
    requests: u64,
    /// One request per connection every this long (`None`: as fast as answered).
    every: Option<Duration>,
}

/// As fast as `clients` connections go, for at most [`PLAN_TIME`].
fn steady(clients: u64) -> LoadPlan {
    LoadPlan {
        clients,
        users_from: 0,
        limit: PLAN_TIME,
        requests: u64::MAX,
        every: None,
    }
}

/// `requests` requests on one connection, users from `users_from`.
fn batch(users_from: u64, requests: u64) -> LoadPlan {
    LoadPlan {
        clients: 1,
        users_from,
        limit: PLAN_TIME,
        requests,
        every: None,
    }
}

/// A load loop running in the background: GET / with a new `X-User-Id` every time, counted.
/// Dropped without [`Load::finish`] (a test failed), its connections stop at once.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Drop for Load {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Load {
    fn start(addr: SocketAddr, plan: LoadPlan) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..plan.clients)
            .map(|k| {
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut client = Client::new(addr);
                    let mut tally = Tally::default();
                    let started = Instant::now();
                    let mut pace = plan.every.map(tokio::time::interval);
                    for i in 0..plan.requests {
                        if let Some(pace) = &mut pace {
                            pace.tick().await;
                        }
                        if stop.load(Ordering::Relaxed) || started.elapsed() >= plan.limit {
                            break;
                        }
                        let user = (plan.users_from + i * plan.clients + k).to_string();
                        let reply = client.get(&[("X-User-Id", &user)]).await;
                        *tally
                            .0
                            .entry((reply.body.trim().to_string(), reply.status))
                            .or_default() += 1;
                    }
                    tally
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Runs `plan` to its end (count or time); everything it got.
    async fn run(addr: SocketAddr, plan: LoadPlan) -> Tally {
        Load::start(addr, plan).run_out().await
    }

    /// Stops the loop; everything it got.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.run_out().await
    }

    /// Waits until every connection has run out of time or requests; everything they got.
    async fn run_out(mut self) -> Tally {
        let mut all = Tally::default();
        for task in std::mem::take(&mut self.tasks) {
            match task.await {
                Ok(tally) => all.add(&tally),
                Err(e) => panic!("a load connection failed: {e}"),
            }
        }
        all
    }
}

/// The default steps, held 2 s each, judged every second on 20 requests of each version.
const SHORT_PLAN: [&str; 12] = [
    "--steps",
    "5,25,50,100",
    "--step-time",
    "2s",
    "--interval",
    "1s",
    "--min-requests",
    "20",
    "--max-wait",
    "30s",
    "--post-promotion",
    "1s",
];

/// The analysis of the healthy rollouts that reach 100%: slower means 100 ms slower (the default
/// is 10 ms). At a 100% step and during the guard, stable answers nobody, so the canary is
/// compared with stable's last passing window, a few seconds earlier, not with stable in the same
/// window; on a shared test machine the latency of everything moves by more than 10 ms between
/// two windows (p50 1.2 ms -> 7.3 ms, p99 16 ms -> 37 ms were seen), which fails a healthy canary
/// there. The 50 ms slower canary is judged with the defaults.
const HEALTHY: &str = r#"{"version": "canary", "analysis": {"latency_floor": "100ms"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_5_percent_is_aborted_and_stable_never_fails() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    canary.fail_every(20);
    let gg = rollout_gateway(&stable, &canary).start().await;
    let (ctl, mut watch) = (gg.ctl(), Watch::on(&gg));
    let load = Load::start(gg.addr, steady(4));
    start(&ctl, &SHORT_PLAN);

    let aborted = watch.until_state(RolloutState::Aborted, PLAN_TIME).await;
    // From then on, everyone is on stable.
    let after = Load::run(gg.addr, batch(1_000_000, 300)).await;
    assert_eq!(
        (after.of("stable"), after.failed("stable")),
        (300, 0),
        "after the abort: {after:?}"
    );
    let all = load.finish().await;
    all.assert_healthy("the whole run", true);
    // An ended rollout's last window ended with it: its length does not grow as time passes
    // (and a window opened by the abort itself is not shown).
    let seconds = |v: &RolloutView| v.window.as_ref().map(|w| w.seconds);
    let first = watch.now().await.expect("the rollout's status");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = watch.now().await.expect("the rollout's status");
    assert!(
        seconds(&first) == seconds(&second),
        "{}\n{}",
        describe(&first),
        describe(&second)
    );
    assert!(
        all.failed("canary") > 0 && all.of("stable") > 0,
        "the canary never failed or stable never answered: {all:?}"
    );

    // Aborted by the analysis, on the error rate, with the verdict that did it.
    let why = describe(&aborted);
    assert_eq!(aborted.weight, 0.0, "{why}");
    assert!(
        aborted.reason.starts_with("aborted: canary 5xx ")
            && aborted.reason.ends_with("(2 failing windows in a row)"),
        "{why}"
    );
    let last = aborted.verdicts.last().expect("a verdict");
    let (_, errors) = parts(&last.text);
    assert!(
        last.outcome == Outcome::Fail
            && last.action.as_deref() == Some("aborted")
            && errors.is_some_and(|e| e.ends_with(": FAIL")),
        "{why}"
    );
    let human = ctl.ok(&["rollout", "status", "--service", "web"]);
    assert!(
        human.starts_with("web: canary aborted at step ") && human.contains(" -> aborted"),
        "{human}"
    );

    // `retry`, the canary still failing: the first step again, a run of its own (none of the
    // last run's verdicts), aborted again after two failing windows of its own.
    let retried = parse(ctl.json(&["rollout", "retry", "--service", "web"]));
    let run = |v: &RolloutView| v.plan.status.as_ref().map(|st| st.started_ms);
    assert!(
        (retried.state, retried.step, retried.weight) == (Some(RolloutState::Progressing), 1, 5.0)
            && run(&retried) != run(&aborted)
            && retried.verdicts.is_empty(),
        "{}",
        describe(&retried)
    );
    let load = Load::start(gg.addr, steady(4));
    let again = watch
        .until("aborted again after the retry", PLAN_TIME, |v| {
            v.state == Some(RolloutState::Aborted) && run(v) == run(&retried)
        })
        .await;
    load.finish().await.assert_healthy("the retry", true);
    let why = describe(&again);
    let failing: Vec<_> = again
        .verdicts
        .iter()
        .filter(|d| d.outcome == Outcome::Fail)
        .collect();
    let started = run(&retried).unwrap_or_default();
    assert!(
        again.reason.ends_with("(2 failing windows in a row)")
            && failing.len() == 2
            && failing[1].action.as_deref() == Some("aborted")
            && again.verdicts.iter().all(|d| d.at_ms >= started),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_50ms_slower_is_aborted_on_latency() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    canary.delay(Duration::from_millis(50));
    let gg = rollout_gateway(&stable, &canary).start().await;
    let (ctl, mut watch) = (gg.ctl(), Watch::on(&gg));
    // More connections: each waits 50 ms whenever the canary answers it.
    let load = Load::start(gg.addr, steady(12));
    start(&ctl, &SHORT_PLAN);

    let aborted = watch.until_state(RolloutState::Aborted, PLAN_TIME).await;
    let all = load.finish().await;
    all.assert_healthy("the whole run", false);

    let why = describe(&aborted);
    let last = aborted.verdicts.last().expect("a verdict");
    let (latency, errors) = parts(&last.text);
    assert!(
        last.outcome == Outcome::Fail
            && last.action.as_deref() == Some("aborted")
            && latency.is_some_and(|l| l.ends_with(": FAIL"))
            && errors.is_some_and(|e| !e.ends_with(": FAIL")),
        "the abort is not the latency's: {why}"
    );
    assert!(
        aborted.reason.starts_with("aborted: ") && aborted.reason.contains("canary p"),
        "{why}"
    );
    assert_eq!(aborted.weight, 0.0, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_step_by_step_without_a_failed_request() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = rollout_gateway(&stable, &canary).start().await;
    let (ctl, mut watch) = (gg.ctl(), Watch::on(&gg));
    let load = Load::start(gg.addr, steady(4));
    let mut plan = SHORT_PLAN.to_vec();
    plan[3] = "1s"; // --step-time
    plan.extend(["--plan", HEALTHY]);
    start(&ctl, &plan);

    let promoted = watch
        .until("promoted, guard passed", PLAN_TIME, |v| {
            v.state == Some(RolloutState::Promoted) && v.guard_until.is_none()
        })
        .await;
    // Everyone is on the promoted canary now.
    let after = Load::run(gg.addr, batch(1_000_000, 200)).await;
    assert_eq!(
        (after.of("canary"), after.failed("canary")),
        (200, 0),
        "after the promote: {after:?}"
    );
    let all = load.finish().await;
    all.assert_healthy("the whole rollout", false);
    assert!(
        all.of("stable") > 0 && all.of("canary") > 0,
        "one version never answered: {all:?}"
    );

    // Every step was judged and passed: 5, 25, 50, 100 (and the guard after the promote).
    let why = describe(&ctl_status(&ctl));
    assert_eq!(promoted.weight, 100.0, "{why}");
    assert!(
        promoted
            .verdicts
            .iter()
            .all(|d| matches!(d.outcome, Outcome::Pass | Outcome::NotEnoughData)),
        "a healthy canary failed a window: {why}"
    );
    let mut passed: Vec<f64> = Vec::new();
    for d in promoted
        .verdicts
        .iter()
        .filter(|d| d.outcome == Outcome::Pass)
    {
        if passed.last() != Some(&d.weight) {
            passed.push(d.weight);
        }
    }
    assert_eq!(passed, [5.0, 25.0, 50.0, 100.0], "{why}");

    // The history names each move, made by the rollout.
    let moves = rollout_moves(&ctl);
    let wanted = [
        "step 2/4 (25%)",
        "step 3/4 (50%)",
        "step 4/4 (100%)",
        "promoted canary: end of plan",
        "promoted canary: guard passed",
    ];
    let mut rest = moves.iter();
    for want in wanted {
        assert!(
            rest.any(|m| m.contains(want)),
            "no `{want}` in order in the rollout's history: {moves:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_service_waits_for_data_then_pauses_after_max_wait() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = rollout_gateway(&stable, &canary).start().await;
    let (ctl, mut watch) = (gg.ctl(), Watch::on(&gg));
    // Three requests a second: about 8 of each version in the 5 s it may wait, short of 20. It
    // waits from the end of the first window (1 s) to max_wait (5 s): 4 s to see it waiting,
    // even when a busy machine stalls graygate for a second or two.
    let load = Load::start(
        gg.addr,
        LoadPlan {
            every: Some(Duration::from_millis(333)),
            ..steady(1)
        },
    );
    start(
        &ctl,
        &[
            "--steps",
            "50,100",
            "--step-time",
            "1s",
            "--interval",
            "1s",
            "--min-requests",
            "20",
            "--max-wait",
            "5s",
        ],
    );

    let waiting = watch
        .until_state(RolloutState::Waiting, Duration::from_secs(10))
        .await;
    assert!(
        waiting.reason.starts_with("waiting for data: canary ")
            && waiting.reason.ends_with("(need 20 each): not enough data"),
        "{}",
        describe(&waiting)
    );
    let paused = watch
        .until_state(RolloutState::Paused, Duration::from_secs(10))
        .await;
    let all = load.finish().await;
    all.assert_healthy("the quiet service", false);

    let why = describe(&paused);
    assert!(
        paused
            .reason
            .starts_with("not enough data after 5s: canary ")
            && paused.reason.ends_with("(need 20 each): not enough data"),
        "{why}"
    );
    // It never failed and never moved: still the first step, its weight kept.
    assert_eq!((paused.step, paused.weight), (1, 50.0), "{why}");
    assert!(
        paused
            .verdicts
            .iter()
            .all(|d| d.outcome == Outcome::NotEnoughData),
        "{why}"
    );
    assert_eq!(
        paused.verdicts.last().and_then(|d| d.action.as_deref()),
        Some("paused"),
        "{why}"
    );
    let moves = rollout_moves(&ctl);
    assert!(
        moves.len() == 2
            && moves[0].starts_with("rollout of web: waiting for data: ")
            && moves[1].starts_with("rollout of web: not enough data after 5s: "),
        "{moves:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_on_at_the_same_step_after_a_restart() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let gg = rollout_gateway(&stable, &canary).start().await;
    let mut watch = Watch::on(&gg);
    let load = Load::start(gg.addr, steady(4));
    let mut plan = SHORT_PLAN.to_vec();
    plan[1] = "20,50,100";
    plan[3] = "3s";
    plan.extend(["--plan", HEALTHY]);
    start(&gg.ctl(), &plan);
    watch.until("at step 2", PLAN_TIME, |v| v.step == 2).await;
    load.finish()
        .await
        .assert_healthy("before the restart", false);
    let before = ctl_status(&gg.ctl());
    assert_eq!(
        (before.step, before.weight),
        (2, 50.0),
        "{}",
        describe(&before)
    );

    let gg = gg.restart().await;
    let ctl = gg.ctl();
    let after = ctl_status(&ctl);
    let why = format!(
        "before:\n{}\nafter:\n{}",
        describe(&before),
        describe(&after)
    );
    assert!(
        matches!(
            after.state,
            Some(RolloutState::Progressing | RolloutState::Waiting)
        ) && after.step == 2
            && after.step_started == before.step_started
            && after.weight == 50.0,
        "{why}"
    );
    assert!(after.verdicts.starts_with(&before.verdicts), "{why}");
    // The restarted instance routes by the rollout's weight.
    let on_canary = Load::run(gg.addr, batch(2_000_000, 200)).await;
    assert!(
        (60..=140).contains(&on_canary.of("canary")),
        "not a 50% split after the restart: {on_canary:?}"
    );

    // And the rollout goes on from there to the promote.
    let mut watch = Watch::on(&gg);
    let load = Load::start(gg.addr, steady(4));
    let promoted = watch.until_state(RolloutState::Promoted, PLAN_TIME).await;
    load.finish()
        .await
        .assert_healthy("after the restart", false);
    let moves = rollout_moves(&ctl);
    let steps: Vec<&String> = moves.iter().filter(|m| m.contains(" step ")).collect();
    assert!(
        steps.len() == 2
            && steps[0].contains("step 2/3 (50%)")
            && steps[1].contains("step 3/3 (100%)"),
        "each step once: {moves:#?}\n{}",
        describe(&promoted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_another_instance_takes_over_a_killed_driver_and_verdicts_sum_both() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let redis = RedisServer::start().await;
    let config = rollout_gateway(&stable, &canary).store(&redis);
    let (a, b) = (config.clone().start().await, config.start().await);
    // A step that holds for longer than the test, judged on 100 requests of each version.
    start(
        &a.ctl(),
        &[
            "--steps",
            "50,100",
            "--step-time",
            "10m",
            "--interval",
            "1s",
            "--min-requests",
            "100",
            "--max-wait",
            "10m",
        ],
    );
    // No traffic yet: the first window ends short of data; both instances publish by then.
    let mut watch_b = Watch::on(&b);
    watch_b
        .until_state(RolloutState::Waiting, Duration::from_secs(10))
        .await;

    // 150 requests through each instance: about 75 of each version on each, short of the 100
    // a verdict needs. Only the sum of both instances makes a verdict.
    let (on_a, on_b) = tokio::join!(
        Load::run(a.addr, batch(0, 150)),
        Load::run(b.addr, batch(1_000_000, 150)),
    );
    for (name, got) in [("A", &on_a), ("B", &on_b)] {
        got.assert_healthy(name, false);
        assert!(
            got.total() == 150 && got.of("canary") < 100 && got.of("stable") < 100,
            "instance {name} alone has enough for a verdict: {got:?}"
        );
    }
    let judged = watch_b
        .until(
            "a verdict on both instances' traffic, and progressing on it",
            Duration::from_secs(10),
            |v| {
                v.verdicts.iter().any(|d| d.outcome == Outcome::Pass)
                    && v.state == Some(RolloutState::Progressing)
            },
        )
        .await;
    let why = describe(&judged);
    let pass = judged
        .verdicts
        .iter()
        .find(|d| d.outcome == Outcome::Pass)
        .expect("a passing verdict");
    assert!(
        pass.canary_requests >= 100
            && pass.stable_requests >= 100
            && pass.canary_requests + pass.stable_requests > 150
            && pass.canary_requests + pass.stable_requests <= 300,
        "the verdict does not sum both instances' 150 requests: {why}"
    );
    assert_eq!(judged.step, 1, "{why}");

    // Which instance drives: the one whose log names the driver of the status.
    let driver = judged.driver.clone().expect("a driver");
    let (victim, survivor) = match (drives(&a, &driver), drives(&b, &driver)) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        seen => panic!("driver {driver}: which instance logged that it drives (A, B): {seen:?}"),
    };
    let verdicts_before = judged.verdicts.len();
    victim.kill();
    let killed = Instant::now();
    let mut watch = Watch::on(&survivor);
    let taken = watch
        .until(
            "another instance drives",
            LEASE + Duration::from_secs(5),
            |v| v.driver.as_ref().is_some_and(|d| d != &driver),
        )
        .await;
    // The dead driver renewed its lease at most a tick before the kill, so the lease runs out
    // within LEASE of it, and the survivor takes it at its next tick. Typically 2.0 s here; the
    // bound leaves a second for a busy machine.
    let took = killed.elapsed();
    assert!(
        took <= patient(LEASE + TICK + Duration::from_secs(1)),
        "the survivor took over {took:?} after the kill, lease {LEASE:?}: {}",
        describe(&taken)
    );
    let new_driver = taken.driver.clone().expect("a driver");
    assert!(
        drives(&survivor, &new_driver),
        "the survivor does not say it drives as {new_driver}:\n{}",
        survivor.log_text()
    );

    // It goes on where the dead driver was: same step, its verdicts kept, new ones added.
    let after = Load::run(survivor.addr, batch(2_000_000, 300)).await;
    after.assert_healthy("the survivor", false);
    let went_on = watch
        .until(
            "a verdict by the new driver",
            Duration::from_secs(10),
            // The verdict (the working record) and the state it leads to (the policy) are two
            // writes: a waiting rollout's passing verdict is seen a moment before `progressing`.
            |v| {
                v.verdicts.len() > verdicts_before
                    && v.verdicts
                        .last()
                        .is_some_and(|d| d.outcome == Outcome::Pass)
                    && v.state == Some(RolloutState::Progressing)
            },
        )
        .await;
    assert!(
        went_on.verdicts.starts_with(&judged.verdicts)
            && went_on.step == 1
            && went_on.state == Some(RolloutState::Progressing),
        "before the kill:\n{}\nafter:\n{}",
        describe(&judged),
        describe(&went_on)
    );
    // Its status through ctl names the new driver.
    assert_eq!(ctl_status(&survivor.ctl()).driver, Some(new_driver));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_records_a_failing_verdict_and_changes_nothing() {
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    // 10% errors: a clear failure, below the hard guard's 20%.
    canary.fail_every(10);
    let gg = rollout_gateway(&stable, &canary).start().await;
    let (ctl, mut watch) = (gg.ctl(), Watch::on(&gg));
    let load = Load::start(gg.addr, steady(4));
    let started = start(
        &ctl,
        &[
            "--steps",
            "50,100",
            "--step-time",
            "1s",
            "--interval",
            "1s",
            "--min-requests",
            "100",
            "--max-wait",
            "30s",
            "--dry-run",
        ],
    );
    assert!(started.plan.dry_run, "{}", describe(&started));

    let would = watch
        .until("a dry run's would-be abort", PLAN_TIME, |v| {
            v.verdicts
                .iter()
                .any(|d| d.action.as_deref() == Some("dry run: would abort"))
        })
        .await;
    // The canary still answers its share of new users.
    let after = Load::run(gg.addr, batch(1_000_000, 200)).await;
    assert!(
        (60..=140).contains(&after.of("canary")),
        "not the 50% split any more: {after:?}"
    );
    load.finish().await.assert_healthy("the dry run", true);

    let now = ctl_status(&ctl);
    let why = describe(&now);
    let failing = would
        .verdicts
        .iter()
        .find(|d| d.action.as_deref() == Some("dry run: would abort"))
        .expect("found above");
    let (_, errors) = parts(&failing.text);
    assert!(
        failing.outcome == Outcome::Fail && errors.is_some_and(|e| e.ends_with(": FAIL")),
        "{why}"
    );
    // Nothing changed: still the first step at its weight, never aborted.
    assert!(
        matches!(
            now.state,
            Some(RolloutState::Progressing | RolloutState::Waiting)
        ) && now.step == 1
            && now.weight == 50.0,
        "{why}"
    );
    assert!(
        now.verdicts
            .iter()
            .all(|d| d.action.as_deref() != Some("aborted")),
        "{why}"
    );
    let split = web_service(&ctl).split.expect("a split");
    assert_eq!(split.weights.get("canary"), Some(&50.0), "{why}");
    let moves = rollout_moves(&ctl);
    assert!(
        moves.iter().all(|summary| !summary.contains("abort")
            && !summary.contains(" step ")
            && !summary.contains("promoted")),
        "{moves:#?}"
    );
    let human = ctl.ok(&["rollout", "status", "--service", "web"]);
    assert!(
        human.contains("(dry run: verdicts never abort)")
            && human.contains("-> dry run: would abort"),
        "{human}"
    );
}
